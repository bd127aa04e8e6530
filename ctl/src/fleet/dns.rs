//! Which VPSes `cerectl dns` covers: offline, one per `--public-ip`;
//! enrolled with several, every one of them, each as it reports itself (its
//! mail host and addresses) with its priority from `cerectl vps list`.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::Context;
use ceres_control::Selection;
use ceres_dnscheck::{MailFleet, MailIdentity, numbered_mail_host, suggested_priority};

use super::Usage;
use crate::cli::{Cli, Unreachable};
use crate::dns::{IdentityArgs, VpsIps};

/// How long each VPS may take to say what it is.
const ASK_LIMIT: Duration = Duration::from_secs(10);

/// The fleet the flags and the enrolled VPSes describe.
pub(crate) async fn fleet(cli: &Cli, args: &IdentityArgs) -> anyhow::Result<MailFleet> {
    if args.public_ip.len() > 1 {
        let Some(domain) = &args.domain else {
            return Err(Usage(
                "several --public-ip describe several VPSes without asking them: give --domain too"
                    .into(),
            )
            .into());
        };
        return offline(domain, args);
    }
    // Flags that describe one VPS, or `--address` reaching one: one VPS.
    if args.public_ip.is_empty() && args.mail_host.is_empty() && args.address.is_none() {
        let store = super::store(cli)?;
        if let Selection::Several(all) = store.select(cli.vps.as_deref()).map_err(super::explain)? {
            return enrolled(&all, args).await;
        }
    }
    // One VPS: exactly what `dns` always did.
    Ok(MailFleet::single(crate::dns::identity(cli, args).await?))
}

/// Several VPSes from the flags alone: one `--public-ip` each, named after
/// its first address, priorities 10, 20, ... in the order given, mail hosts
/// from `--mail-host` (one each) or mx1.DOMAIN, mx2.DOMAIN, ...
fn offline(domain: &str, args: &IdentityArgs) -> anyhow::Result<MailFleet> {
    let groups: &[VpsIps] = &args.public_ip;
    if !args.mail_host.is_empty() && args.mail_host.len() != groups.len() {
        return Err(Usage(format!(
            "{} --public-ip (one per VPS) but {} --mail-host: give one --mail-host per --public-ip, \
             in the same order, or none for mx1.{domain}, mx2.{domain}, ...",
            groups.len(),
            args.mail_host.len()
        ))
        .into());
    }
    let mut members = Vec::new();
    for (i, VpsIps(ips)) in groups.iter().enumerate() {
        let host = args
            .mail_host
            .get(i)
            .cloned()
            .unwrap_or_else(|| numbered_mail_host(domain, i));
        let name = ips
            .first()
            .map(IpAddr::to_string)
            .unwrap_or_else(|| format!("vps{}", i + 1));
        members.push((
            name,
            suggested_priority(i),
            identity(domain, &host, ips, args)?,
        ));
    }
    Ok(MailFleet::new(members)?)
}

/// Every enrolled VPS as it reports itself. Each is asked at once, within
/// its own time limit; one that does not answer stops the command, naming it
/// (records without it would tell the admin to remove its MX).
async fn enrolled(
    all: &[ceres_control::VpsEntry],
    args: &IdentityArgs,
) -> anyhow::Result<MailFleet> {
    let reports = super::status::fetch(all, ASK_LIMIT).await;
    let failed: Vec<String> = reports
        .vpses
        .iter()
        .filter_map(|v| {
            v.error
                .as_ref()
                .map(|e| format!("{}: {}", v.name, crate::status::escape_controls(e)))
        })
        .collect();
    if !failed.is_empty() {
        return Err(Unreachable(anyhow::anyhow!(
            "cannot get every VPS's domain, mail host and addresses ({}); give --domain and one \
             --public-ip per VPS to work without them, or --vps NAME for one VPS",
            failed.join("; ")
        ))
        .into());
    }
    let mut members = Vec::new();
    for v in &reports.vpses {
        let Some(status) = &v.status else { continue };
        let vps = &status.vps;
        let ips = vps
            .public_ips
            .iter()
            .map(|s| {
                s.parse::<IpAddr>()
                    .with_context(|| format!("VPS {} reported a bad public address {s:?}", v.name))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let domain = args.domain.clone().unwrap_or_else(|| vps.domain.clone());
        let host = if vps.mail_host.is_empty() {
            format!("mail.{domain}")
        } else {
            vps.mail_host.clone()
        };
        let id = identity(&domain, &host, &ips, args)
            .with_context(|| format!("what VPS {} reports", v.name))?;
        members.push((v.name.clone(), v.priority, id));
    }
    Ok(MailFleet::new(members)?)
}

fn identity(
    domain: &str,
    host: &str,
    ips: &[IpAddr],
    args: &IdentityArgs,
) -> anyhow::Result<MailIdentity> {
    let mut builder = MailIdentity::builder(domain)
        .mail_host(host)
        .addresses(ips.iter().copied());
    if let Some(selector) = &args.dkim_selector {
        builder = builder.dkim_selector(selector);
    }
    Ok(builder.build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(ips: &[&[&str]], hosts: &[&str]) -> IdentityArgs {
        IdentityArgs {
            domain: Some("example.com".into()),
            mail_host: hosts.iter().map(|h| (*h).to_owned()).collect(),
            public_ip: ips
                .iter()
                .map(|g| VpsIps(g.iter().map(|ip| ip.parse().unwrap()).collect()))
                .collect(),
            dkim_selector: Some("s1".into()),
            address: None,
        }
    }

    #[test]
    fn offline_one_public_ip_per_vps_in_priority_order() {
        let a = args(
            &[&["203.0.113.10", "2001:db8::10"], &["198.51.100.20"]],
            &[],
        );
        let f = offline("example.com", &a).unwrap();
        let m = f.members();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].name(), Some("203.0.113.10"));
        assert_eq!(m[0].priority, 10);
        assert_eq!(m[0].id.mail_host(), "mx1.example.com");
        assert_eq!(m[0].id.addresses().len(), 2);
        assert_eq!(m[1].name(), Some("198.51.100.20"));
        assert_eq!(m[1].priority, 20);
        assert_eq!(m[1].id.mail_host(), "mx2.example.com");
        assert_eq!(m[1].id.dkim_selector(), Some("s1"));

        // Mail hosts given: one per VPS, in the same order.
        let a = args(
            &[&["203.0.113.10"], &["198.51.100.20"]],
            &["mail.example.com", "backup.example.com"],
        );
        let f = offline("example.com", &a).unwrap();
        assert_eq!(f.members()[0].id.mail_host(), "mail.example.com");
        assert_eq!(f.members()[1].id.mail_host(), "backup.example.com");
    }

    #[test]
    fn offline_refuses_what_cannot_be_paired_or_shared() {
        let e = offline(
            "example.com",
            &args(
                &[&["203.0.113.10"], &["198.51.100.20"]],
                &["mail.example.com"],
            ),
        )
        .unwrap_err();
        assert!(e.is::<Usage>(), "{e:#}");
        assert!(
            e.to_string().contains("one --mail-host per --public-ip"),
            "{e:#}"
        );
        let e = offline(
            "example.com",
            &args(&[&["203.0.113.10"], &["203.0.113.10"]], &[]),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("both have the address 203.0.113.10"),
            "{e:#}"
        );
        let e = offline(
            "example.com",
            &args(
                &[&["203.0.113.10"], &["198.51.100.20"]],
                &["mail.example.com", "mail.example.com"],
            ),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("both use the mail host mail.example.com"),
            "{e:#}"
        );
    }
}
