//! What a session reports to the VPS on every tick: the tunnel, the
//! forwarders, egress, firewall findings, the mail-server probes, Postfix,
//! the stack probe.

use ceres_sync::Unpoison;
use std::time::SystemTime;

use ceres_pki::unix_secs;
use ceres_proto::Report;

use super::connection::Planes;
use super::{SharedCreds, current};
use crate::settings::HomeSettings;

/// Builds one session's reports.
#[derive(Debug, Default)]
pub(super) struct Reporter {
    /// The firewall advice last logged: it is logged when it first appears
    /// or changes, not with every report.
    last_firewall: String,
}

impl Reporter {
    /// The report of this tick.
    pub(super) async fn report(
        &mut self,
        creds: &SharedCreds,
        settings: &HomeSettings,
        planes: &Planes<'_>,
        started: SystemTime,
    ) -> Report {
        let Planes {
            tunnel,
            mail,
            probes,
            stack_probes,
            ..
        } = *planes;
        let not_after = current(creds)
            .info()
            .map(|i| unix_secs(i.not_after))
            .unwrap_or(0);
        let (forwards, forward_error, egress) = mail.report().await;
        let (firewall_findings, firewall) = mail.firewall_check().await;
        if !firewall.is_empty() && firewall != self.last_firewall {
            tracing::warn!("{firewall}");
        }
        self.last_firewall.clone_from(&firewall);
        let (input_filter, input_filter_error) = mail.filter_status();
        let postfix = mail.postfix_report().await;
        Report {
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
            probes: probes.locked().clone(),
            postfix,
            stack: stack_probes.locked().clone(),
        }
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
