//! The DNS side of a CERES mail gateway: what to publish (A/AAAA, MX, SPF, DMARC, DKIM,
//! PTR) and a live verification of what is actually published, plus DNSBL look-ups.
//!
//! `cerectl dns` renders a [`Checklist`] (text table, BIND zone snippet, JSON);
//! `cerectl dns --check` and `cerectl doctor` run [`verify`] and [`dnsbl_check`]
//! against a [`Lookup`]: [`HickoryLookup`] for real DNS, [`FakeLookup`] in tests.
//! A domain behind several VPSes is a [`MailFleet`]: [`Checklist::for_fleet`] and
//! [`verify_fleet`] give each VPS its own MX (with its priority), A/AAAA and PTR,
//! and one SPF with every address; one VPS reads exactly as [`MailIdentity`] alone.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use ceres_dnscheck::{Checklist, HickoryLookup, MailIdentity, verify};
//!
//! let id = MailIdentity::builder("example.com")
//!     .address("203.0.113.10".parse()?)
//!     .dkim_selector("s1")
//!     .build()?;
//! print!("{}", Checklist::for_identity(&id).render_text());
//! let lookup = HickoryLookup::from_system()?; // or HickoryLookup::with_server("127.0.0.1:5353")?
//! let report = verify(&id, &lookup).await;
//! print!("{}", report.render_text(false));
//! std::process::exit(if report.is_ok() { 0 } else { 1 });
//! # }
//! ```

mod checklist;
mod dkim;
mod dmarc;
mod dnsbl;
mod fleet;
mod identity;
mod lookup;
pub mod spf;
mod verify;

pub use checklist::{
    Checklist, DEFAULT_ZONE_TTL, MX_PRIORITY, RecordPurpose, RecordToSet, SetAt, zone_name,
    zone_txt_rdata,
};
pub use dkim::{DkimError, DkimKeyType, DkimRecord};
pub use dmarc::{DmarcError, DmarcPolicy, DmarcRecord};
pub use dnsbl::{
    DEFAULT_DNSBL_ZONES, DnsblResult, DnsblStatus, dnsbl_check, dnsbl_query_name, listing_meaning,
    refusal_meaning, render_dnsbl_text,
};
pub use fleet::{
    FleetMember, MailFleet, PRIORITY_STEP, VpsSummary, numbered_mail_host, suggested_priority,
};
pub use identity::{IdentityError, MailIdentity, MailIdentityBuilder};
pub use lookup::{
    FakeLookup, HickoryLookup, Lookup, LookupError, MxRecord, ResolverError, reverse_name,
};
pub use verify::{
    Check, CheckKind, Report, Row, Status, Summary, Table, verify, verify_fleet, verify_ptr,
    verify_routing, verify_spf,
};
