//! The records to publish for a mail domain, derived from its [`MailIdentity`] (one
//! VPS) or [`MailFleet`] (several), and their renderings: a text table, a BIND zone
//! snippet and JSON.

mod render;

use std::net::IpAddr;

use serde::Serialize;

use crate::fleet::{MailFleet, VpsSummary};
use crate::identity::MailIdentity;
use crate::lookup::reverse_name;

pub use render::{DEFAULT_ZONE_TTL, zone_name, zone_txt_rdata};

/// MX priority CERES recommends for one VPS (any value works while it is the only
/// MX), and for the first of several.
pub const MX_PRIORITY: u16 = 10;

/// Where a record has to be set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SetAt {
    /// In the domain's zone, at the DNS host.
    DnsZone,
    /// In the VPS provider's control panel (reverse DNS belongs to the address owner).
    VpsProvider,
}

impl SetAt {
    /// Short label for tables.
    pub fn label(self) -> &'static str {
        match self {
            Self::DnsZone => "DNS zone",
            Self::VpsProvider => "VPS provider",
        }
    }
}

/// What a record is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordPurpose {
    /// A/AAAA of the mail host.
    Address,
    /// MX of the domain.
    Mx,
    /// SPF TXT of the domain.
    Spf,
    /// DMARC TXT at `_dmarc`.
    Dmarc,
    /// DKIM key TXT at `<selector>._domainkey`.
    Dkim,
    /// Reverse DNS of a VPS address.
    Ptr,
}

/// One record to set.
///
/// JSON (stable): `set_at` (`"dns_zone"` | `"vps_provider"`), `purpose` (`"address"`,
/// `"mx"`, `"spf"`, `"dmarc"`, `"dkim"`, `"ptr"`), `type` (`"A"`, `"AAAA"`, `"MX"`,
/// `"TXT"`, `"PTR"`), `name` (owner name, no trailing dot; for PTR the
/// `in-addr.arpa`/`ip6.arpa` name), `value` (string, or `null` when it comes from the
/// mail software), `priority` (MX only, else `null`), `address` (PTR only: the VPS
/// address), `note` (string or `null`); with several VPSes also `vps` (the name of the
/// VPS a record belongs to, absent for the domain-wide SPF, DMARC and DKIM).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordToSet {
    /// Where to set it.
    pub set_at: SetAt,
    /// What it is for.
    pub purpose: RecordPurpose,
    /// DNS record type.
    #[serde(rename = "type")]
    pub rtype: &'static str,
    /// Owner name without trailing dot.
    pub name: String,
    /// The record data (MX: the exchange host; TXT: unquoted text); `None` when the
    /// value has to come from the mail software (DKIM).
    pub value: Option<String>,
    /// MX priority.
    pub priority: Option<u16>,
    /// For PTR: the VPS address whose reverse DNS this is.
    pub address: Option<IpAddr>,
    /// Extra instructions.
    pub note: Option<String>,
    /// The VPS this record is for, when there are several.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vps: Option<String>,
}

/// Everything to set for one mail domain.
///
/// JSON (stable): `{"domain": ..., "mail_host": ..., "records": [RecordToSet...]}`;
/// with several VPSes `mail_host` is the first one's (by priority) and `vpses` lists
/// them all (`[{"name", "priority", "mail_host", "addresses"}]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Checklist {
    /// The mail domain.
    pub domain: String,
    /// The mail host (of the first VPS by priority).
    pub mail_host: String,
    /// Each VPS, when there are several (empty for one).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub vpses: Vec<VpsSummary>,
    /// Records in the order an admin sets them.
    pub records: Vec<RecordToSet>,
}

/// The SPF record CERES recommends: every VPS address, plus `mx`, and `-all`.
pub(crate) fn recommended_spf(fleet: &MailFleet) -> String {
    let mut s = String::from("v=spf1");
    for ip in fleet.ipv4() {
        s.push_str(&format!(" ip4:{ip}"));
    }
    for ip in fleet.ipv6() {
        s.push_str(&format!(" ip6:{ip}"));
    }
    s.push_str(" mx -all");
    s
}

/// The DMARC record CERES recommends to start with (monitoring, aggregate reports).
pub(crate) fn recommended_dmarc(id: &MailIdentity) -> String {
    format!("v=DMARC1; p=none; rua=mailto:dmarc@{}; fo=1", id.domain())
}

/// Where the DKIM value comes from, with the usual commands.
pub(crate) fn dkim_hint(id: &MailIdentity) -> String {
    let sel = id.dkim_selector().unwrap_or("<selector>");
    let d = id.domain();
    format!(
        "value comes from your mail software's DKIM key: opendkim-genkey -s {sel} -d {d} (publish {sel}.txt), \
         rspamadm dkim_keygen -s {sel} -d {d}, or the DKIM page of your mail server's admin UI; \
         it looks like \"v=DKIM1; k=rsa; p=MIIB...\""
    )
}

impl Checklist {
    /// Builds the checklist for one VPS.
    pub fn for_identity(id: &MailIdentity) -> Self {
        Self::for_fleet(&MailFleet::from(id.clone()))
    }

    /// Builds the checklist for every VPS of `fleet`: A/AAAA of each VPS's mail
    /// host, one MX per VPS with its priority, one SPF with every address, DMARC
    /// and DKIM once, and the PTR of each address naming its own VPS's host.
    pub fn for_fleet(fleet: &MailFleet) -> Self {
        let id = fleet.primary();
        let mut records = Vec::new();
        let zone = |purpose, rtype, name: &str, value: Option<String>| RecordToSet {
            set_at: SetAt::DnsZone,
            purpose,
            rtype,
            name: name.to_owned(),
            value,
            priority: None,
            address: None,
            note: None,
            vps: None,
        };
        for m in fleet.members() {
            let host = m.id.mail_host();
            let vps = m.name.clone();
            for ip in m.id.ipv4() {
                records.push(RecordToSet {
                    vps: vps.clone(),
                    ..zone(RecordPurpose::Address, "A", host, Some(ip.to_string()))
                });
            }
            for ip in m.id.ipv6() {
                records.push(RecordToSet {
                    vps: vps.clone(),
                    ..zone(RecordPurpose::Address, "AAAA", host, Some(ip.to_string()))
                });
            }
        }
        for m in fleet.members() {
            records.push(RecordToSet {
                priority: Some(m.priority),
                vps: m.name.clone(),
                ..zone(
                    RecordPurpose::Mx,
                    "MX",
                    id.domain(),
                    Some(m.id.mail_host().to_owned()),
                )
            });
        }
        records.push(zone(
            RecordPurpose::Spf,
            "TXT",
            id.domain(),
            Some(recommended_spf(fleet)),
        ));
        records.push(zone(
            RecordPurpose::Dmarc,
            "TXT",
            &id.dmarc_name(),
            Some(recommended_dmarc(id)),
        ));
        let (dkim_name, dkim_note) = match id.dkim_name() {
            Some(n) => (n, dkim_hint(id)),
            None => (
                format!("<selector>._domainkey.{}", id.domain()),
                format!(
                    "no DKIM selector configured: use the selector your mail software signs with; {}",
                    dkim_hint(id)
                ),
            ),
        };
        records.push(RecordToSet {
            note: Some(dkim_note),
            ..zone(RecordPurpose::Dkim, "TXT", &dkim_name, None)
        });
        for m in fleet.members() {
            for ip in m.id.addresses() {
                records.push(RecordToSet {
                    set_at: SetAt::VpsProvider,
                    purpose: RecordPurpose::Ptr,
                    rtype: "PTR",
                    name: reverse_name(ip),
                    value: Some(m.id.mail_host().to_owned()),
                    priority: None,
                    address: Some(ip),
                    note: Some(ptr_note(m.name())),
                    vps: m.name.clone(),
                });
            }
        }
        Self {
            domain: id.domain().to_owned(),
            mail_host: id.mail_host().to_owned(),
            vpses: fleet.summaries(),
            records,
        }
    }

    /// Pretty-printed JSON (see [`Checklist`] and [`RecordToSet`] for the schema).
    pub fn render_json(&self) -> String {
        // Serialising plain strings, numbers and enums cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// Where a PTR is set: the provider of the VPS it belongs to.
fn ptr_note(vps: Option<&str>) -> String {
    match vps {
        None => "set as reverse DNS in the VPS provider's control panel, not in your zone".into(),
        Some(name) => format!(
            "set as reverse DNS in the control panel of VPS {name}'s provider, not in your zone"
        ),
    }
}

#[cfg(test)]
mod tests;
