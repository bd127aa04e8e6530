//! The control-plane services and the agent's main loop, one idea per
//! file: [`enrol`] (with its limiter [`enrol_limit`]), [`session`] and
//! [`admin`] are the three gRPC services, [`errors`] maps domain errors to
//! gRPC statuses, [`startup`] wires it all and serves; the background tasks
//! are [`rotation_schedule`], [`revocations`], [`renewal`], [`metrics`] and
//! [`status_file`]; [`watch_sources`] is what the watchdog reads of the agent.

mod admin;
mod enrol;
mod enrol_limit;
mod errors;
mod metrics;
mod renewal;
mod revocations;
mod rotation_schedule;
mod session;
mod startup;
mod status_file;
mod watch_sources;

use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use ceres_control::require_role;
use ceres_pki::Role;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Status};

use crate::hub::Hub;
use crate::relays::VpsRelays;
use crate::revocation::HomeRevocations;
use crate::rotation::Rotator;
use crate::settings::VpsSettings;
use crate::state::{ServerCert, VpsState};
use crate::tokens::TokenStore;
use crate::tunnel::VpsTunnel;
use enrol_limit::FailureLimit;

pub use startup::run;

/// The version string of this build.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What the services and background tasks share: one per running agent.
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
    /// The watchdog: its checks, alert channels and their metrics.
    watch: crate::watch::Watch,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

/// The three gRPC services (one handle, cloned into each server).
#[derive(Debug, Clone)]
struct Svc(Arc<Ctx>);

impl Ctx {
    /// Home as status shows it: what the hub knows, with its access and
    /// revocation.
    fn home_status(&self) -> ceres_proto::HomeStatus {
        let mut home = self.hub.status();
        let (access, revocation) = self.revocations.status();
        home.access = access as i32;
        home.revocation = revocation;
        home
    }
}

impl Svc {
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
