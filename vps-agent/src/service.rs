//! The control-plane services and the agent's main loop.

use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use ceres_control::server::SharedServerConfig;
use ceres_control::{TlsIncoming, caller, require_role};
use ceres_pki::{Role, Secret, unix_secs};
use ceres_proto::admin_server::{Admin, AdminServer};
use ceres_proto::agent_server::{Agent, AgentServer};
use ceres_proto::enrollment_server::{Enrollment, EnrollmentServer};
use ceres_proto::{
    EnrollRequest, EnrollResponse, HomeMessage, RenewRequest, RenewResponse, RotateRequest,
    RotateResponse, StatusRequest, StatusResponse, VpsMessage, VpsStatus, Welcome, home_message,
    vps_message,
};
use futures::Stream;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

use crate::hub::Hub;
use crate::relays::VpsRelays;
use crate::revocation::{HomeRevocations, RevocationWatch};
use crate::rotation::Rotator;
use crate::settings::VpsSettings;
use crate::state::{ServerCert, VpsState};
use crate::tokens::{RedeemError, TokenStore};
use crate::tunnel::{Owner, VpsTunnel};

/// The version string of this build.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A home agent that sends nothing (not even its Hello) for this long is dropped.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Failed enrolments allowed per address per window: tokens are 256-bit
/// random, so guessing is hopeless anyway; the limit keeps a guesser from
/// burning CPU on CSR checks and flooding the log.
const ENROLL_FAILURES: u32 = 5;
/// The window of [`ENROLL_FAILURES`].
const ENROLL_WINDOW: Duration = Duration::from_secs(600);

/// Failed enrolments of one client address in the current window.
#[derive(Debug)]
struct Failures {
    count: u32,
    since: std::time::Instant,
    /// The block was logged; later refusals in the window are not, so a
    /// guessing flood cannot fill the journal.
    logged: bool,
}

/// Counts failed enrolments per client address.
#[derive(Debug, Default)]
struct FailureLimit {
    by_ip: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, Failures>>,
}

/// An address over the limit: how long until it may try again, and whether
/// this is the first refusal of the window (the one to log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Blocked {
    wait: Duration,
    first: bool,
}

impl FailureLimit {
    /// `Err` while `ip` is over the limit.
    fn check(&self, ip: std::net::IpAddr) -> Result<(), Blocked> {
        let mut map = self.by_ip.lock().unwrap_or_else(|p| p.into_inner());
        match map.get_mut(&ip) {
            Some(f) if f.count >= ENROLL_FAILURES && f.since.elapsed() < ENROLL_WINDOW => {
                let first = !f.logged;
                f.logged = true;
                Err(Blocked {
                    wait: ENROLL_WINDOW - f.since.elapsed(),
                    first,
                })
            }
            _ => Ok(()),
        }
    }

    fn failed(&self, ip: std::net::IpAddr) {
        let mut map = self.by_ip.lock().unwrap_or_else(|p| p.into_inner());
        // Old entries go, so the map cannot grow without bound.
        map.retain(|_, f| f.since.elapsed() < ENROLL_WINDOW);
        let f = map.entry(ip).or_insert(Failures {
            count: 0,
            since: std::time::Instant::now(),
            logged: false,
        });
        f.count += 1;
    }
}

/// How long `cerectl rotate` waits for a rotation, and how long a rotation
/// may stay unfinished before it is abandoned (the current keys stay).
const ROTATE_WAIT: Duration = Duration::from_secs(30);

/// How long open connections may take to finish after SIGTERM.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);
/// Missed reports before the VPS gives up on a session.
const MISSED_REPORTS: u32 = 3;

/// Shared by all services.
#[derive(Debug)]
struct Ctx {
    settings: VpsSettings,
    state: VpsState,
    tokens: TokenStore,
    hub: Hub,
    started: SystemTime,
    server_cert: RwLock<ServerCert>,
    tunnel: VpsTunnel,
    relays: VpsRelays,
    rotator: Rotator,
    revocations: HomeRevocations,
    enroll_limit: FailureLimit,
    watch: crate::watch::Watch,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

// The one place where domain errors become gRPC statuses.
impl From<RedeemError> for Status {
    fn from(e: RedeemError) -> Self {
        match e {
            RedeemError::Store(_) => Status::internal(e.to_string()),
            _ => Status::permission_denied(e.to_string()),
        }
    }
}

fn pki_status(e: ceres_pki::PkiError) -> Status {
    match e {
        ceres_pki::PkiError::Parse { .. } => Status::invalid_argument(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

fn check_version(v: u32) -> Result<(), Status> {
    ceres_proto::negotiate(v, v)
        .map(|_| ())
        .map_err(Status::failed_precondition)
}

#[derive(Debug, Clone)]
struct Svc(Arc<Ctx>);

#[tonic::async_trait]
impl Enrollment for Svc {
    async fn enroll(
        &self,
        req: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        let remote = caller(&req)?.remote;
        let body = req.into_inner();
        if let Err(blocked) = self.0.enroll_limit.check(remote.ip()) {
            if blocked.first {
                tracing::warn!(%remote, retry_in_s = blocked.wait.as_secs(), "enrolment refused: too many failed attempts from this address (token guessing?); further attempts from it are refused without a log line until then");
            }
            return Err(Status::resource_exhausted(format!(
                "too many failed join attempts from {}: try again in {} s",
                remote.ip(),
                blocked.wait.as_secs().max(1)
            )));
        }
        let (role, certificate_pem) = match self.enroll_inner(&body) {
            Ok(ok) => ok,
            Err(status) => {
                self.0.enroll_limit.failed(remote.ip());
                tracing::warn!(%remote, reason = status.message(), "enrolment refused");
                return Err(status);
            }
        };
        let serial = ceres_pki::CertificateInfo::from_pem(&certificate_pem)
            .map(|i| i.serial)
            .unwrap_or_default();
        tracing::info!(%remote, role = %role, name = %body.name, serial, "enrolled a new host");
        let ctx = &self.0;
        Ok(Response::new(EnrollResponse {
            protocol_version: ceres_proto::PROTOCOL_VERSION,
            role: match role {
                Role::Home => ceres_proto::Role::Home,
                Role::Admin => ceres_proto::Role::Admin,
            } as i32,
            certificate_pem,
            ca_certificate_pem: ctx.state.ca.cert_pem().to_owned(),
            control_address: ctx.settings.control_address.clone(),
            vps_agent_version: VERSION.to_owned(),
        }))
    }

    async fn renew(&self, req: Request<RenewRequest>) -> Result<Response<RenewResponse>, Status> {
        let who = caller(&req)?.clone();
        let Some(cert) = who.certificate else {
            return Err(Status::unauthenticated(
                "renewal needs the current certificate: present it, or enrol again with a new token",
            ));
        };
        self.refuse_revoked(&cert)?;
        let role = cert
            .role
            .ok_or_else(|| Status::permission_denied("the certificate carries no CERES role"))?;
        let body = req.into_inner();
        check_version(body.protocol_version)?;
        // The renewal inherits the lineage: revoking any serial of it later
        // (the one a thief renewed from, say) revokes this one too.
        let lineage = crate::certs::lineage_of(&self.0.state.dir, &cert.serial);
        let certificate_pem = self.sign(&body.csr_pem, role, &cert.name, Some(&lineage))?;
        tracing::info!(remote = %who.remote, role = %role, name = %cert.name, lineage, "renewed a client certificate");
        Ok(Response::new(RenewResponse {
            certificate_pem,
            ca_certificate_pem: self.0.state.ca.cert_pem().to_owned(),
        }))
    }
}

impl Svc {
    fn enroll_inner(&self, body: &EnrollRequest) -> Result<(Role, String), Status> {
        check_version(body.protocol_version)?;
        let secret: [u8; 32] = body
            .token_secret
            .as_slice()
            .try_into()
            .map_err(|_| Status::invalid_argument("malformed join token secret"))?;
        // Validate before redeeming: a broken request must not burn the token.
        ceres_pki::validate_csr(&body.csr_pem).map_err(pki_status)?;
        let role = self.0.tokens.redeem(&Secret(secret))?;
        Ok((role, self.sign(&body.csr_pem, role, &body.name, None)?))
    }

    /// The caller's certificate if it has `role` and is not revoked. The
    /// TLS acceptor refuses revoked certificates at the handshake; this
    /// refuses them on connections that were up before the revocation.
    fn authorize<T>(
        &self,
        req: &Request<T>,
        role: Role,
    ) -> Result<ceres_pki::CertificateInfo, Status> {
        let cert = require_role(req, role)?;
        self.refuse_revoked(&cert)?;
        Ok(cert)
    }

    fn refuse_revoked(&self, cert: &ceres_pki::CertificateInfo) -> Result<(), Status> {
        if crate::certs::is_revoked(&self.0.state.dir, &cert.serial) {
            return Err(Status::permission_denied(format!(
                "the certificate of {:?} (serial {}) is revoked: enrol again with a new token",
                cert.name, cert.serial
            )));
        }
        Ok(())
    }

    /// Signs a CSR; `lineage`: of the certificate being renewed (`None`
    /// for an enrolment, which starts its own).
    fn sign(
        &self,
        csr_pem: &str,
        role: Role,
        name: &str,
        lineage: Option<&str>,
    ) -> Result<String, Status> {
        let pem = self
            .0
            .state
            .ca
            .sign_client(csr_pem, role, name, self.0.settings.client_cert_ttl)
            .map_err(pki_status)?;
        // Recorded so `ceres-vps cert list` can show it and `cert revoke`
        // find it with its lineage; a certificate that could not be
        // recorded could not be revoked with its lineage, so it is not
        // handed out.
        crate::certs::record(&self.0.state.dir, &pem, lineage).map_err(|e| {
            tracing::error!(error = %format!("{e:#}"), "could not record the issued certificate; not issuing it");
            Status::internal("the VPS could not record the certificate: see its log")
        })?;
        Ok(pem)
    }
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<VpsMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Agent for Svc {
    type SessionStream = SessionStream;

    async fn session(
        &self,
        req: Request<Streaming<HomeMessage>>,
    ) -> Result<Response<SessionStream>, Status> {
        let cert = self.authorize(&req, Role::Home)?;
        let remote = caller(&req)?.remote;
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Hello within 10 s"))??;
        let Some(HomeMessage {
            kind: Some(home_message::Kind::Hello(hello)),
        }) = first
        else {
            return Err(Status::invalid_argument("a session must start with Hello"));
        };
        let version = ceres_proto::negotiate(hello.min_protocol_version, hello.protocol_version)
            .map_err(|m| {
                tracing::warn!(%remote, agent_version = %hello.agent_version, "home agent refused: {m}");
                Status::failed_precondition(format!("ceres-vps {VERSION}: {m}"))
            })?;
        let ctx = self.0.clone();
        let owner = Owner {
            lineage: crate::certs::lineage_of(&ctx.state.dir, &cert.serial),
            name: cert.name.clone(),
        };
        // A home whose certificate is not revoked connects: if home was
        // revoked, this is the new home joining. Its egress comes back.
        // Checked again here, not only at the handshake: a session of the
        // revoked home that raced its own revocation must not clear it.
        if crate::certs::is_revoked(&ctx.state.dir, &cert.serial) {
            return Err(Status::permission_denied(
                "this certificate is revoked (ceres-vps cert revoke): join again with a new token",
            ));
        }
        if ctx.revocations.is_revoked() {
            tracing::info!(name = %owner.name, lineage = %owner.lineage, "a new home joined after a revocation");
            match ctx.revocations.clear_for(Some(&owner.lineage)) {
                Ok(crate::revocation::Cleared::Yes) => {
                    let c = ctx.clone();
                    let _ =
                        tokio::task::spawn_blocking(move || c.relays.ensure_egress(&c.settings))
                            .await;
                }
                Ok(crate::revocation::Cleared::NothingToClear) => {}
                Ok(crate::revocation::Cleared::RevokedLineage) => {
                    return Err(Status::permission_denied(
                        "this certificate's lineage is revoked: join again with a new token",
                    ));
                }
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "cannot clear the revoked-home note")
                }
            }
        }
        // While a rotation is under way (either side says so) the keys are
        // settled by the rotation messages; a Welcome with the old keys
        // would undo home's half of it.
        let tunnel = if hello.wg_public_key.is_empty()
            || hello.pending_rotation != 0
            || ctx.rotator.staged()
        {
            None
        } else {
            Some(ctx.tunnel.params_for(&hello.wg_public_key, &owner)?)
        };
        let interval = ctx.settings.report_interval;
        let ticket = ctx.hub.connect(
            hello.clone(),
            remote,
            version,
            unix_secs(cert.not_after),
            &cert.serial,
            &ctx.cancel,
        );
        tracing::info!(%remote, hostname = %hello.hostname, agent_version = %hello.agent_version, protocol = version, "home agent connected");
        let (tx, rx) = mpsc::channel(16);
        let welcome = VpsMessage {
            kind: Some(vps_message::Kind::Welcome(Welcome {
                protocol_version: version,
                vps_agent_version: VERSION.to_owned(),
                report_interval_secs: interval.as_secs().max(1) as u32,
                tunnel,
                vps_started_at_unix: unix_secs(ctx.started),
                relays: relays_text(&ctx.settings),
            })),
        };
        let _ = tx.send(Ok(welcome)).await;
        ctx.rotator
            .attach(&ctx.tunnel, tx.clone(), hello.pending_rotation)
            .await;
        ctx.tracker.clone().spawn(async move {
            // A deadline counted from the last message home sent, not a
            // sleep started afresh on every pass: pings go out more often
            // than reports come in, so a fresh sleep never expired and a
            // hung home that keeps TCP open stayed "connected" forever.
            let stale_after = interval * MISSED_REPORTS;
            let deadline = tokio::time::sleep(stale_after);
            tokio::pin!(deadline);
            let mut ping = tokio::time::interval(interval);
            let ping_msg = VpsMessage {
                kind: Some(vps_message::Kind::Command(ceres_proto::Command {
                    kind: Some(ceres_proto::command::Kind::Ping(ceres_proto::Ping {})),
                })),
            };
            let reason = loop {
                tokio::select! {
                    _ = ticket.cancel.cancelled() => break "replaced, revoked or shutting down",
                    _ = &mut deadline => break "no report in time",
                    _ = ping.tick() => {
                        // Never wait here: a home that reads nothing fills
                        // the channel, and waiting would hold off the deadline.
                        if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(Ok(ping_msg.clone())) {
                            break "home closed the session";
                        }
                    }
                    msg = inbound.message() => {
                        deadline.as_mut().reset(tokio::time::Instant::now() + stale_after);
                        match msg {
                        Ok(Some(HomeMessage { kind: Some(home_message::Kind::Report(r)) })) => ctx.hub.report(ticket.id, r),
                        Ok(Some(HomeMessage { kind: Some(home_message::Kind::RotateKey(k)) })) => {
                            let _ = ctx.rotator.on_home_key(&ctx.tunnel, k.rotation, &k.home_public_key).await;
                        }
                        Ok(Some(HomeMessage { kind: Some(home_message::Kind::RotateDone(d)) })) => {
                            ctx.rotator.finish(&ctx.tunnel, Some(d.rotation), true);
                        }
                        Ok(Some(HomeMessage { kind: Some(home_message::Kind::RotateAbort(a)) })) => {
                            let _ = ctx.rotator.fail(&ctx.tunnel, a.rotation, &format!("home gave up: {}", a.reason)).await;
                        }
                        Ok(Some(_)) => {}
                        Ok(None) => break "home closed the session",
                        Err(_) => break "connection lost",
                        }
                    }
                }
            };
            ctx.hub.disconnect(ticket.id);
            tracing::info!(%remote, reason, "home agent session ended");
            drop(tx);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[tonic::async_trait]
impl Admin for Svc {
    async fn status(
        &self,
        req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        self.authorize(&req, Role::Admin)?;
        let ctx = &self.0;
        // Looking at the other firewall tables runs `nft`: off the async workers.
        let egress = {
            let ctx = Arc::clone(ctx);
            tokio::task::spawn_blocking(move || ctx.relays.egress_status())
                .await
                .map_err(|e| Status::internal(format!("egress status: {e}")))?
        };
        let now = SystemTime::now();
        let server_not_after = ctx
            .server_cert
            .read()
            .map(|c| unix_secs(c.info.not_after))
            .unwrap_or(0);
        Ok(Response::new(StatusResponse {
            vps: Some(VpsStatus {
                agent_version: VERSION.to_owned(),
                protocol_version: ceres_proto::PROTOCOL_VERSION,
                started_at_unix: unix_secs(ctx.started),
                uptime_secs: now
                    .duration_since(ctx.started)
                    .unwrap_or_default()
                    .as_secs(),
                public_ips: ctx
                    .settings
                    .public_ips
                    .iter()
                    .map(|ip| ip.to_string())
                    .collect(),
                domain: ctx.settings.domain.clone(),
                mail_host: ctx.settings.mail_host.clone(),
                control_address: ctx.settings.control_address.clone(),
                server_certificate_not_after_unix: server_not_after,
                now_unix: unix_secs(now),
                relays: relays_text(&ctx.settings),
                tunnel_vps_address: ctx.settings.tunnel.vps_address.to_string(),
                tunnel_home_address: ctx.settings.tunnel.home_address.to_string(),
                tunnel_vps_address6: crate::tunnel::net_text(ctx.settings.tunnel.vps_address6),
                tunnel_home_address6: crate::tunnel::net_text(ctx.settings.tunnel.home_address6),
                egress_ports: ctx
                    .settings
                    .relay
                    .egress_ports
                    .iter()
                    .map(|p| *p as u32)
                    .collect(),
            }),
            home: Some({
                let mut home = ctx.hub.status();
                let (access, revocation) = ctx.revocations.status();
                home.access = access as i32;
                home.revocation = revocation;
                home
            }),
            vps_tunnel: Some(ctx.tunnel.report()),
            relays: ctx.relays.report(),
            egress: Some(egress),
            rotation: Some(ctx.rotator.status()),
            checks: ctx.watch.checks(),
            alert_channels: ctx.watch.channels(),
        }))
    }

    async fn test_alerts(
        &self,
        req: Request<ceres_proto::TestAlertsRequest>,
    ) -> Result<Response<ceres_proto::TestAlertsResponse>, Status> {
        let who = self.authorize(&req, Role::Admin)?;
        tracing::info!(by = %who.name, "test notifications requested");
        Ok(Response::new(self.0.watch.test_alerts().await))
    }

    async fn rotate(
        &self,
        req: Request<RotateRequest>,
    ) -> Result<Response<RotateResponse>, Status> {
        let who = self.authorize(&req, Role::Admin)?;
        let ctx = &self.0;
        if ctx.tunnel.engine().is_none() {
            return Err(Status::failed_precondition(
                "the tunnel is off (CERES_TUNNEL=off): nothing to rotate",
            ));
        }
        tracing::info!(by = %who.name, "key rotation requested");
        let id = ctx.rotator.begin().await?;
        let outcome = ctx.rotator.wait(id, ROTATE_WAIT).await;
        Ok(Response::new(RotateResponse {
            rotation: id,
            ok: outcome == "ok",
            message: outcome,
            finished_unix: unix_secs(SystemTime::now()),
        }))
    }
}

/// The relay list as home receives it: home ports written out, so a home agent
/// of another version maps every port as this VPS does.
fn relays_text(settings: &VpsSettings) -> String {
    settings
        .relay
        .relays
        .iter()
        .map(ceres_relay::RelaySpec::explicit)
        .collect::<Vec<_>>()
        .join(",")
}

fn tls_config(state: &VpsState, cert: &ServerCert) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    Ok(Arc::new(ceres_pki::tls::server_config(
        state.ca.cert_der(),
        &cert.cert_pem,
        cert.key_pem(),
    )?))
}

/// Runs the VPS agent on `listener` until `cancel`.
///
/// Returns once every task it started has finished.
pub async fn run(
    settings: VpsSettings,
    state: VpsState,
    listener: TcpListener,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let tokens = TokenStore::open(state.tokens_dir()?)?;
    tokens.collect_garbage();
    let server_cert = state.server_cert(&settings)?;
    let shared: SharedServerConfig = Arc::new(RwLock::new(tls_config(&state, &server_cert)?));
    let tracker = TaskTracker::new();
    let rotator = Rotator::load(&state.dir, settings.rotate_every)?;
    let revocations = HomeRevocations::load(&state.dir)?;
    // Revoked while the agent was stopped: the peer is not brought back.
    forget_revoked_home(&state, &rotator, &revocations)?;
    let watch = RevocationWatch::new(&state.dir)?;
    let tunnel = VpsTunnel::start(&settings.tunnel, &state.dir, &cancel).await?;
    let hub = Hub::default();
    let relays = VpsRelays::start(&settings, hub.home_reach(), &cancel, &tracker)?;
    if revocations.is_revoked() {
        tracing::warn!("home is revoked: no egress for it until a new home joins");
        relays.remove_egress();
    }
    rotator.resume(&tunnel);
    let watchdog = crate::watch::Watch::new(&settings, &cancel, &tracker);
    let ctx = Arc::new(Ctx {
        watch: watchdog,
        tunnel,
        relays,
        rotator,
        revocations,
        enroll_limit: FailureLimit::default(),
        settings,
        state,
        tokens,
        hub,
        started: SystemTime::now(),
        server_cert: RwLock::new(server_cert),
        cancel: cancel.clone(),
        tracker: tracker.clone(),
    });
    let revoked_dir = ctx.state.dir.clone();
    let revoked: ceres_control::server::RevocationCheck =
        Arc::new(move |serial: &str| crate::certs::is_revoked(&revoked_dir, serial));
    tracker.spawn(watch_revocations(ctx.clone(), watch));
    ctx.watch.start(ctx.clone());
    let limits = ctx.settings.control_limits;
    let incoming = TlsIncoming::spawn(
        listener,
        shared.clone(),
        revoked,
        limits,
        cancel.clone(),
        &tracker,
    );
    tracker.spawn(renew_server_cert(ctx.clone(), shared));
    tracker.spawn(watch_promotions(ctx.clone()));
    let mctx = ctx.clone();
    tracker.spawn(ceres_daemon::metrics::start(
        ctx.settings.metrics_listen,
        Arc::new(move || render_metrics(&mctx)),
        cancel.clone(),
    ));
    tracker.spawn(rotation_schedule(ctx.clone()));
    let sctx = ctx.clone();
    let egress_cache: EgressCache = Arc::default();
    tracker.spawn(ceres_daemon::status_file::keep_written(
        ctx.state.dir.path().to_owned(),
        move || local_status(sctx.clone(), egress_cache.clone()),
        cancel.clone(),
    ));
    let svc = Svc(ctx.clone());
    let serve = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        .max_concurrent_streams(Some(limits.max_streams))
        .add_service(EnrollmentServer::new(svc.clone()))
        .add_service(AgentServer::new(svc.clone()))
        .add_service(AdminServer::new(svc))
        .serve_with_incoming_shutdown(incoming, cancel.clone().cancelled_owned());
    // Draining is bounded: a client that keeps its connection open after
    // GOAWAY must not hold the agent (and systemd's stop job) hostage.
    let drain_deadline = async {
        cancel.cancelled().await;
        tokio::time::sleep(DRAIN_TIMEOUT).await;
    };
    let result = tokio::select! {
        r = serve => r,
        _ = drain_deadline => {
            tracing::warn!(timeout_s = DRAIN_TIMEOUT.as_secs(), "connections still open after the drain timeout: closing them");
            Ok(())
        }
    };
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
    ctx.relays.remove_rules();
    match Arc::try_unwrap(ctx) {
        Ok(ctx) => ctx.tunnel.shutdown().await,
        Err(_) => tracing::warn!(
            "tunnel still referenced at shutdown; the device goes away with the process"
        ),
    }
    result.map_err(Into::into)
}

/// The last egress status and when it was taken: it runs `nft`, so the
/// local status file (rewritten every 2 s) takes it again only every 10 s.
type EgressCache =
    Arc<std::sync::Mutex<Option<(crate::local_status::EgressPart, std::time::Instant)>>>;

/// What `ceres-vps status` shows of the running agent.
async fn local_status(ctx: Arc<Ctx>, cache: EgressCache) -> crate::local_status::AgentPart {
    use crate::local_status::{AgentPart, EgressPart, HomePart, RelayPart};
    let cached = cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .filter(|(_, at)| at.elapsed() < Duration::from_secs(10))
        .map(|(e, _)| e.clone());
    let egress = match cached {
        Some(e) => e,
        None => {
            let c = ctx.clone();
            let e = tokio::task::spawn_blocking(move || {
                EgressPart::from_proto(&c.relays.egress_status())
            })
            .await
            .unwrap_or_default();
            *cache.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((e.clone(), std::time::Instant::now()));
            e
        }
    };
    AgentPart {
        version: VERSION.to_owned(),
        started_at_unix: unix_secs(ctx.started),
        control_address: ctx.settings.control_address.clone(),
        home: HomePart::from_proto(&ctx.hub.status()),
        relays: ctx
            .relays
            .report()
            .iter()
            .map(RelayPart::from_proto)
            .collect(),
        egress,
    }
}

/// The Prometheus page of the VPS agent.
fn render_metrics(ctx: &Ctx) -> String {
    use ceres_daemon::metrics::{header, line};
    let mut o = String::new();
    let now = SystemTime::now();
    header(
        &mut o,
        "ceres_home_connected",
        "gauge",
        "1 while the home agent's session is up",
    );
    line(
        &mut o,
        "ceres_home_connected",
        &[],
        if ctx.hub.is_connected() { 1.0 } else { 0.0 },
    );
    let t = ctx.tunnel.report();
    ceres_control::report::tunnel_metrics(&mut o, &t, unix_secs(now), "home");
    header(
        &mut o,
        "ceres_tunnel_dropped_datagrams_total",
        "counter",
        "WireGuard datagrams dropped (garbage, replays, unknown keys)",
    );
    line(
        &mut o,
        "ceres_tunnel_dropped_datagrams_total",
        &[],
        t.dropped as f64,
    );
    let relays = ctx.relays.report();
    type Pick = fn(&ceres_proto::RelayPort) -> u64;
    let per_port: [(&str, &str, &str, Pick); 5] = [
        (
            "ceres_relay_connections_active",
            "gauge",
            "relayed connections open now",
            |p| p.active,
        ),
        (
            "ceres_relay_connections_total",
            "counter",
            "relayed connections accepted",
            |p| p.total,
        ),
        (
            "ceres_relay_bytes_in_total",
            "counter",
            "bytes from clients",
            |p| p.bytes_in,
        ),
        (
            "ceres_relay_bytes_out_total",
            "counter",
            "bytes to clients",
            |p| p.bytes_out,
        ),
        (
            "ceres_relay_unavailable_total",
            "counter",
            "connections turned away while home was away (421 or close)",
            |p| p.unavailable,
        ),
    ];
    for (name, kind, help, pick) in per_port {
        header(&mut o, name, kind, help);
        for p in &relays {
            line(
                &mut o,
                name,
                &[("port", &p.port.to_string())],
                pick(p) as f64,
            );
        }
    }
    header(
        &mut o,
        "ceres_relay_refused_total",
        "counter",
        "connections refused by limits, by reason",
    );
    for p in &relays {
        for c in &p.refused_by {
            let reason = ceres_control::report::relay_refusal(c.reason())
                .map_or("unknown", ceres_relay::Refusal::as_str);
            line(
                &mut o,
                "ceres_relay_refused_total",
                &[("port", &p.port.to_string()), ("reason", reason)],
                c.count as f64,
            );
        }
    }
    let r = ctx.rotator.status();
    header(
        &mut o,
        "ceres_rotations_total",
        "counter",
        "completed WireGuard key rotations since the CA was made",
    );
    line(&mut o, "ceres_rotations_total", &[], r.completed as f64);
    header(
        &mut o,
        "ceres_keys_age_seconds",
        "gauge",
        "age of the current WireGuard keys",
    );
    line(
        &mut o,
        "ceres_keys_age_seconds",
        &[],
        (unix_secs(now) - r.keys_since_unix).max(0) as f64,
    );
    header(
        &mut o,
        "ceres_rotation_last_failed",
        "gauge",
        "1 when the last rotation failed",
    );
    line(
        &mut o,
        "ceres_rotation_last_failed",
        &[],
        if r.last_outcome.starts_with("failed") {
            1.0
        } else {
            0.0
        },
    );
    header(
        &mut o,
        "ceres_certificate_expiry_timestamp_seconds",
        "gauge",
        "when a certificate expires (renewed at 2/3 of its life)",
    );
    if let Ok(c) = ctx.server_cert.read() {
        line(
            &mut o,
            "ceres_certificate_expiry_timestamp_seconds",
            &[("cert", "server")],
            unix_secs(c.info.not_after) as f64,
        );
    }
    let home = ctx.hub.status();
    if home.certificate_not_after_unix > 0 {
        line(
            &mut o,
            "ceres_certificate_expiry_timestamp_seconds",
            &[("cert", "home")],
            home.certificate_not_after_unix as f64,
        );
    }
    ctx.watch.render_metrics(&mut o);
    o
}

/// What the watchdog reads of the agent.
impl crate::watch::Sources for Ctx {
    fn home(&self) -> ceres_proto::HomeStatus {
        let mut home = self.hub.status();
        let (access, revocation) = self.revocations.status();
        home.access = access as i32;
        home.revocation = revocation;
        home
    }
    fn home_lineage(&self) -> Option<String> {
        self.tunnel.owner().map(|o| o.lineage)
    }
    fn tunnel(&self) -> Option<ceres_proto::TunnelReport> {
        self.tunnel.engine().map(|_| self.tunnel.report())
    }
    fn relays(&self) -> Vec<ceres_proto::RelayPort> {
        self.relays.report()
    }
    fn egress(&self) -> ceres_proto::EgressStatus {
        self.relays.egress_status()
    }
    fn rotation(&self) -> ceres_proto::RotationStatus {
        self.rotator.status()
    }
    fn server_certificate(&self) -> Option<ceres_pki::CertificateInfo> {
        self.server_cert.read().ok().map(|c| c.info.clone())
    }
    fn ca_certificate_pem(&self) -> String {
        self.state.ca.cert_pem().to_owned()
    }
    fn state_dir(&self) -> &ceres_state::StateDir {
        &self.state.dir
    }
}

/// When the engine moves to staged keys (home handshook with them), the
/// rotation is made permanent — even if home's RotateDone never arrives.
async fn watch_promotions(ctx: Arc<Ctx>) {
    let Some(engine) = ctx.tunnel.engine() else {
        return;
    };
    let mut rx = engine.watch_rotation();
    let mut seen = rx.borrow().rotations;
    loop {
        tokio::select! {
            _ = ctx.cancel.cancelled() => return,
            r = rx.changed() => if r.is_err() { return },
        }
        let now = rx.borrow().rotations;
        if now != seen {
            seen = now;
            ctx.rotator.finish(&ctx.tunnel, None, false);
        }
    }
}

/// Rotates on schedule (with jitter), and abandons a rotation home never
/// completes, keeping the current keys.
async fn rotation_schedule(ctx: Arc<Ctx>) {
    if ctx.tunnel.engine().is_none() {
        return;
    }
    let every = ctx.settings.rotate_every;
    let mut jitter = every.mul_f64(rand_fraction() / 10.0);
    let mut done = ctx.rotator.subscribe_done();
    loop {
        let due = ctx.rotator.next_due() + jitter;
        let wake = match ctx.rotator.pending() {
            // Check a pending rotation when it would time out.
            Some((_, started)) => {
                SystemTime::UNIX_EPOCH + Duration::from_secs(started.max(0) as u64) + ROTATE_WAIT
            }
            None => due,
        };
        let sleep = wake
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
            .max(Duration::from_millis(200));
        tokio::select! {
            _ = ctx.cancel.cancelled() => return,
            _ = tokio::time::sleep(sleep) => {}
            // A rotation ended (or failed): plan the next one from now.
            _ = done.changed() => {}
        }
        let now = SystemTime::now();
        if let Some((id, started)) = ctx.rotator.pending() {
            let started = SystemTime::UNIX_EPOCH + Duration::from_secs(started.max(0) as u64);
            if now.duration_since(started).unwrap_or_default() >= ROTATE_WAIT {
                let _ = ctx
                    .rotator
                    .fail(&ctx.tunnel, id, "not completed in time")
                    .await;
            }
            continue;
        }
        if now >= ctx.rotator.next_due() + jitter && ctx.hub.is_connected() {
            match ctx.rotator.begin().await {
                Ok(id) => tracing::info!(rotation = id, "scheduled key rotation started"),
                Err(e) => tracing::warn!(
                    error = e.message(),
                    "scheduled key rotation could not start"
                ),
            }
            jitter = every.mul_f64(rand_fraction() / 10.0);
        }
    }
}

fn rand_fraction() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    // A fraction in [0, 1) from the std hasher's random keys: no extra dependency for jitter.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(unix_secs(SystemTime::now()) as u64);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// At start, before the tunnel loads home's peer: if the lineage that owns
/// it was revoked while the agent was stopped, the peer and a pending
/// rotation are dropped and home is noted as revoked.
fn forget_revoked_home(
    state: &VpsState,
    rotator: &Rotator,
    revocations: &HomeRevocations,
) -> anyhow::Result<()> {
    let dir = &state.dir;
    let Some(owner) = crate::tunnel::stored_owner(dir)? else {
        return Ok(());
    };
    if !crate::certs::lineage_revoked(dir, &owner.lineage) {
        return Ok(());
    }
    rotator.forget_pending()?;
    crate::tunnel::forget_stored(dir)?;
    revocations.set(crate::revocation::revoked_now(
        dir,
        &owner.name,
        &owner.lineage,
    ))?;
    tracing::warn!(name = %owner.name, lineage = %owner.lineage, "home's certificate was revoked while the agent was stopped: its WireGuard peer is not loaded");
    Ok(())
}

/// Acts on `ceres-vps cert revoke` at once: ends live sessions of revoked
/// certificates and, when the lineage owning home's WireGuard key is
/// revoked, removes the peer and the egress rules and notes home as revoked.
async fn watch_revocations(ctx: Arc<Ctx>, watch: RevocationWatch) {
    // Once at start too: marks written while the watch was being set up.
    enforce_revocations(&ctx).await;
    loop {
        tokio::select! {
            _ = ctx.cancel.cancelled() => return,
            r = watch.changed() => if let Err(e) = r {
                tracing::error!(error = %e, "cannot watch the revocation directory; revocations now take effect at the next connection only");
                return;
            },
        }
        enforce_revocations(&ctx).await;
    }
}

async fn enforce_revocations(ctx: &Arc<Ctx>) {
    let dir = &ctx.state.dir;
    if let Some(serial) = ctx
        .hub
        .end_revoked(|serial| crate::certs::is_revoked(dir, serial))
    {
        tracing::warn!(serial, "home session ended: its certificate was revoked");
    }
    let Some(owner) = ctx
        .tunnel
        .owner()
        .filter(|o| crate::certs::lineage_revoked(dir, &o.lineage))
    else {
        return;
    };
    // The note first: from the moment anything of home's goes, status says
    // why (and a restart half-way finishes the job from it).
    let note = crate::revocation::revoked_now(dir, &owner.name, &owner.lineage);
    if let Err(e) = ctx.revocations.set(note) {
        tracing::error!(error = %format!("{e:#}"), "cannot record that home was revoked");
    }
    if let Some((id, _)) = ctx.rotator.pending() {
        let _ = ctx.rotator.fail(&ctx.tunnel, id, "home revoked").await;
    }
    match ctx.tunnel.remove_home() {
        Ok(key) => {
            tracing::warn!(name = %owner.name, lineage = %owner.lineage, home_key = ?key, "home's certificate was revoked: its WireGuard peer is removed")
        }
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "removing the revoked home's peer from the state failed")
        }
    }
    // `nft` runs: off the async workers.
    let c = Arc::clone(ctx);
    let _ = tokio::task::spawn_blocking(move || c.relays.remove_egress()).await;
}

/// Re-checks the server certificate twice a day and swaps in a renewed one
/// for new connections.
async fn renew_server_cert(ctx: Arc<Ctx>, shared: SharedServerConfig) {
    loop {
        tokio::select! {
            _ = ctx.cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(12 * 3600)) => {}
        }
        let current = ctx.server_cert.read().map(|c| c.info.fingerprint).ok();
        match ctx.state.server_cert(&ctx.settings) {
            Ok(cert) if Some(cert.info.fingerprint) != current => {
                match tls_config(&ctx.state, &cert) {
                    Ok(cfg) => {
                        if let Ok(mut w) = shared.write() {
                            *w = cfg;
                        }
                        if let Ok(mut w) = ctx.server_cert.write() {
                            *w = cert;
                        }
                        tracing::info!("server certificate renewed");
                    }
                    Err(e) => tracing::error!(error = %e, "renewed server certificate unusable"),
                }
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "server certificate renewal failed; will retry"),
        }
    }
}
