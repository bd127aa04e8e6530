//! The register of client certificates the CA issued, and revocation.
//!
//! Each issued certificate is recorded in `<state>/issued/<serial>.json`
//! with its *lineage*: the serial of the enrolment it descends from. A
//! renewal inherits the lineage of the certificate that asked for it, so a
//! host keeps one identity however often it renews — and revoking any serial
//! of a lineage revokes all of it, including certificates renewed later (a
//! thief who renewed a stolen certificate is cut off by revoking the old
//! serial, or by the enrolment name).
//!
//! A revoked serial gets a file `<state>/revoked/<serial>`, a revoked lineage
//! `<state>/revoked/lineage-<serial>` (serials are hex, so the two cannot
//! clash). The running agent checks that directory after every TLS handshake
//! and on every call, and watches it to act at once on live sessions and on
//! home's tunnel, so `ceres-vps cert revoke` (another process) needs no
//! restart and no lock.

use ceres_pki::{CertificateInfo, unix_secs};
use ceres_state::StateDir;
use serde::{Deserialize, Serialize};

/// The directory of revocation marks (watched by the running agent).
pub const REVOKED_DIR: &str = "revoked";
const ISSUED_DIR: &str = "issued";
const LINEAGE_PREFIX: &str = "lineage-";

/// What is recorded per issued certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Issued {
    /// Serial, hex.
    pub serial: String,
    /// Name given at enrolment.
    pub name: String,
    /// Role.
    pub role: String,
    /// Validity end, unix seconds.
    pub not_after_unix: i64,
    /// When issued, unix seconds.
    pub issued_unix: i64,
    /// Serial of the enrolment this certificate descends from (its own for
    /// an enrolment). Empty in records of older versions: the serial itself.
    #[serde(default)]
    pub lineage: String,
}

impl Issued {
    /// The lineage, for records of older versions too.
    pub fn lineage(&self) -> &str {
        if self.lineage.is_empty() {
            &self.serial
        } else {
            &self.lineage
        }
    }
}

fn valid_serial(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Records a newly issued certificate; `lineage` is the lineage of the
/// certificate it renews (`None`: an enrolment starts its own).
///
/// Issuing depends on this record: a certificate whose lineage is not
/// written down could not be revoked with its lineage, so it must not be
/// handed out.
pub fn record(dir: &StateDir, cert_pem: &str, lineage: Option<&str>) -> anyhow::Result<Issued> {
    let info = CertificateInfo::from_pem(cert_pem)?;
    let serial = info.serial.to_ascii_lowercase();
    let issued = Issued {
        lineage: lineage
            .map(str::to_ascii_lowercase)
            .unwrap_or_else(|| serial.clone()),
        serial,
        name: info.name.clone(),
        role: info.role.map(|r| r.name().to_owned()).unwrap_or_default(),
        not_after_unix: unix_secs(info.not_after),
        issued_unix: unix_secs(std::time::SystemTime::now()),
    };
    let d = dir.subdir(ISSUED_DIR)?;
    d.write(
        &format!("{}.json", issued.serial),
        &serde_json::to_vec_pretty(&issued)?,
    )?;
    Ok(issued)
}

/// The record of `serial`, if the register has one.
fn issued(dir: &StateDir, serial: &str) -> Option<Issued> {
    if !valid_serial(serial) {
        return None;
    }
    let path = dir
        .join(ISSUED_DIR)
        .join(format!("{}.json", serial.to_ascii_lowercase()));
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The lineage of `serial`: from the register, or the serial itself for a
/// certificate the register does not know (issued by an older version).
pub fn lineage_of(dir: &StateDir, serial: &str) -> String {
    issued(dir, serial)
        .map(|i| i.lineage().to_owned())
        .unwrap_or_else(|| serial.to_ascii_lowercase())
}

/// The issued certificates, newest last, with whether each is revoked.
pub fn list(dir: &StateDir) -> anyhow::Result<Vec<(Issued, bool)>> {
    let d = dir.subdir(ISSUED_DIR)?;
    let mut out = Vec::new();
    for name in d.list()? {
        if let Some(Ok(i)) = d
            .read_optional(&name)?
            .map(|b| serde_json::from_slice::<Issued>(&b))
        {
            let revoked = is_revoked(dir, &i.serial);
            out.push((i, revoked));
        }
    }
    out.sort_by_key(|(i, _)| i.issued_unix);
    Ok(out)
}

/// Whether the lineage `lineage` is revoked.
pub fn lineage_revoked(dir: &StateDir, lineage: &str) -> bool {
    valid_serial(lineage)
        && dir
            .join(REVOKED_DIR)
            .join(format!("{LINEAGE_PREFIX}{}", lineage.to_ascii_lowercase()))
            .exists()
}

/// Whether `serial` is revoked: itself, or its lineage.
pub fn is_revoked(dir: &StateDir, serial: &str) -> bool {
    valid_serial(serial)
        && (dir
            .join(REVOKED_DIR)
            .join(serial.to_ascii_lowercase())
            .exists()
            || lineage_revoked(dir, &lineage_of(dir, serial)))
}

/// Revokes by serial or by enrolment name, each with its whole lineage;
/// returns the revoked entries.
pub fn revoke(dir: &StateDir, what: &str) -> anyhow::Result<Vec<Issued>> {
    let all: Vec<Issued> = list(dir)?.into_iter().map(|(i, _)| i).collect();
    let mut lineages: Vec<String> = all
        .iter()
        .filter(|i| i.serial.eq_ignore_ascii_case(what) || i.name == what)
        .map(|i| i.lineage().to_owned())
        .collect();
    lineages.sort();
    lineages.dedup();
    let mut targets: Vec<Issued> = all
        .into_iter()
        .filter(|i| lineages.iter().any(|l| l == i.lineage()))
        .collect();
    if targets.is_empty() && valid_serial(what) {
        // Not in the register (issued by an older version): revoke the serial anyway.
        let serial = what.to_ascii_lowercase();
        lineages.push(serial.clone());
        targets.push(Issued {
            lineage: serial.clone(),
            serial,
            name: String::new(),
            role: String::new(),
            not_after_unix: 0,
            issued_unix: 0,
        });
    }
    anyhow::ensure!(
        !targets.is_empty(),
        "no issued certificate has the serial or name {what:?}: see `ceres-vps cert list`"
    );
    let d = dir.subdir(REVOKED_DIR)?;
    // Lineages first: a renewal racing this command is caught by its lineage.
    for l in &lineages {
        d.write(&format!("{LINEAGE_PREFIX}{l}"), b"")?;
    }
    for t in &targets {
        d.write(&t.serial.to_ascii_lowercase(), b"")?;
    }
    Ok(targets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ceres_pki::{Ca, KeyAndCsr, Role};
    use std::time::Duration;

    fn issue(ca: &Ca, dir: &StateDir, name: &str, lineage: Option<&str>) -> Issued {
        let key = KeyAndCsr::generate(name).unwrap();
        let pem = ca
            .sign_client(key.csr_pem(), Role::Home, name, Duration::from_secs(3600))
            .unwrap();
        record(dir, &pem, lineage).unwrap()
    }

    #[test]
    fn revoking_an_old_serial_revokes_certificates_renewed_from_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path().join("s")).unwrap();
        let ca = Ca::generate("example.com", Duration::from_secs(86400)).unwrap();
        let first = issue(&ca, &dir, "home", None);
        let renewed = issue(&ca, &dir, "home", Some(first.lineage()));
        let other = issue(&ca, &dir, "laptop", None);
        assert_eq!(lineage_of(&dir, &renewed.serial), first.serial);

        revoke(&dir, &first.serial).unwrap();
        assert!(is_revoked(&dir, &first.serial));
        assert!(
            is_revoked(&dir, &renewed.serial),
            "the renewal is revoked too"
        );
        assert!(!is_revoked(&dir, &other.serial));
        // Renewed after the revocation (a renewal in flight): still revoked.
        let late = issue(&ca, &dir, "home", Some(&lineage_of(&dir, &renewed.serial)));
        assert!(is_revoked(&dir, &late.serial));
    }

    #[test]
    fn revoking_by_name_revokes_the_lineage() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path().join("s")).unwrap();
        let ca = Ca::generate("example.com", Duration::from_secs(86400)).unwrap();
        let first = issue(&ca, &dir, "home", None);
        let renewed = issue(&ca, &dir, "home", Some(first.lineage()));
        let revoked = revoke(&dir, "home").unwrap();
        assert_eq!(revoked.len(), 2);
        assert!(is_revoked(&dir, &renewed.serial));
        assert!(revoke(&dir, "nobody").is_err());
    }
}
