//! Fetching the VPS's Admin.Status for the commands that need the configured
//! domain, relays and home's probes (`mailserver-config`, `send-test`, `doctor`).

use ceres_proto::admin_client::AdminClient;
use ceres_proto::{StatusRequest, StatusResponse, VpsStatus};

use crate::cli::{Cli, Unreachable, admin_credentials, creds_dir};

/// The whole status; any failure is [`Unreachable`] (exit 3) with `hint`
/// saying which flags make the VPS unnecessary.
pub(crate) async fn fetch_status(
    cli: &Cli,
    address: Option<&str>,
    hint: &'static str,
) -> anyhow::Result<StatusResponse> {
    let dir = creds_dir(cli)?;
    let creds = admin_credentials(&dir, address)
        .await
        .map_err(|e| Unreachable(e.context(hint)))?;
    let channel = creds
        .connect(address)
        .await
        .map_err(|e| Unreachable(anyhow::Error::from(e).context(hint)))?;
    let resp = AdminClient::new(channel)
        .status(StatusRequest {})
        .await
        .map_err(|s| {
            Unreachable(anyhow::anyhow!(
                "the VPS refused the status request: {}",
                s.message()
            ))
        })?
        .into_inner();
    Ok(resp)
}

/// The VPS section of a status, which every VPS sends.
pub(crate) fn vps_part(resp: &StatusResponse) -> anyhow::Result<&VpsStatus> {
    resp.vps
        .as_ref()
        .ok_or_else(|| Unreachable(anyhow::anyhow!("the VPS's status has no VPS section")).into())
}

/// An address reported with or without a prefix (`10.77.77.2/24`): the
/// address and the prefix length, if any.
pub(crate) fn split_prefix(s: &str) -> anyhow::Result<(std::net::IpAddr, Option<u8>)> {
    let (ip, prefix) = match s.split_once('/') {
        Some((ip, p)) => (ip, Some(p)),
        None => (s, None),
    };
    let ip: std::net::IpAddr = ip
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("{s:?} is not an IP address"))?;
    let prefix = prefix
        .map(|p| p.trim().parse::<u8>())
        .transpose()
        .map_err(|_| anyhow::anyhow!("{s:?} has a bad prefix length"))?;
    Ok((ip, prefix))
}

/// Home's IPv6 tunnel address as outbound mail uses it, or `off` when the VPS
/// carries no IPv6 egress: only then may Postfix bind it (`smtp_bind_address6`);
/// otherwise its outbound SMTP is kept to IPv4. Older VPS agents report
/// neither field: `off`.
pub(crate) fn egress6_home_address(resp: &StatusResponse) -> String {
    let available = resp
        .egress
        .as_ref()
        .is_some_and(|e| e.ipv6() == ceres_proto::Ipv6Egress::Available);
    match resp.vps.as_ref() {
        Some(v) if available && !v.tunnel_home_address6.is_empty() => {
            v.tunnel_home_address6.clone()
        }
        _ => "off".into(),
    }
}
