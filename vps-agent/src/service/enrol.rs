//! The `Enrollment` service: a host joins with a one-time token and a CSR
//! and gets its first client certificate; an enrolled host renews its
//! certificate with the one it holds.

use ceres_control::caller;
use ceres_pki::{Role, Secret};
use ceres_proto::enrollment_server::Enrollment;
use ceres_proto::{EnrollRequest, EnrollResponse, RenewRequest, RenewResponse};
use tonic::{Request, Response, Status};

use super::errors::{check_version, pki_status, shutting_down};
use super::{Svc, VERSION};

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
        // Redeeming the token and recording the certificate are synced
        // writes (and signing is CPU work): off the async workers.
        let (svc, req_body) = (self.clone(), body.clone());
        let enrolled = ceres_daemon::blocking(move || svc.enroll_inner(&req_body))
            .await
            .unwrap_or_else(|e| Err(shutting_down(e)));
        let (role, certificate_pem) = match enrolled {
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
        // Recording the certificate is a synced write: off the async workers.
        let (svc, csr, name, line) = (
            self.clone(),
            body.csr_pem,
            cert.name.clone(),
            lineage.clone(),
        );
        let certificate_pem =
            ceres_daemon::blocking(move || svc.sign(&csr, role, &name, Some(&line)))
                .await
                .map_err(shutting_down)??;
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
