//! What the watchdog reads of the running agent: the same facts `cerectl
//! status` gets, through [`crate::watch::Sources`].

use ceres_pki::CertificateInfo;
use ceres_proto::{EgressStatus, HomeStatus, RelayPort, RotationStatus, TunnelReport};
use ceres_state::StateDir;

use super::Ctx;

impl crate::watch::Sources for Ctx {
    fn home(&self) -> HomeStatus {
        self.home_status()
    }
    fn home_lineage(&self) -> Option<String> {
        self.tunnel.owner().map(|o| o.lineage)
    }
    fn tunnel(&self) -> Option<TunnelReport> {
        self.tunnel.engine().map(|_| self.tunnel.report())
    }
    fn relays(&self) -> Vec<RelayPort> {
        self.relays.report()
    }
    fn egress(&self) -> EgressStatus {
        self.relays.egress_status()
    }
    fn rotation(&self) -> RotationStatus {
        self.rotator.status()
    }
    fn server_certificate(&self) -> Option<CertificateInfo> {
        self.server_cert.read().ok().map(|c| c.info.clone())
    }
    fn ca_certificate_pem(&self) -> String {
        self.state.ca.cert_pem().to_owned()
    }
    fn state_dir(&self) -> &StateDir {
        &self.state.dir
    }
}
