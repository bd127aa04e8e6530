//! The register of client certificates the CA issued, and revocation.
//!
//! Each issued certificate is recorded in `<state>/issued/<serial>.json`;
//! a revoked serial gets a file `<state>/revoked/<serial>`. The running
//! agent checks that directory after every TLS handshake, so `ceres-vps cert
//! revoke` (another process) takes effect at the next connection without a
//! restart or a lock.

use ceres_pki::{CertificateInfo, unix_secs};
use ceres_state::StateDir;
use serde::{Deserialize, Serialize};

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
}

fn valid_serial(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Records a newly issued certificate.
pub fn record(dir: &StateDir, cert_pem: &str) -> anyhow::Result<()> {
    let info = CertificateInfo::from_pem(cert_pem)?;
    let issued = Issued {
        serial: info.serial.clone(),
        name: info.name.clone(),
        role: info.role.map(|r| r.name().to_owned()).unwrap_or_default(),
        not_after_unix: unix_secs(info.not_after),
        issued_unix: unix_secs(std::time::SystemTime::now()),
    };
    let d = dir.subdir("issued")?;
    d.write(
        &format!("{}.json", info.serial),
        &serde_json::to_vec_pretty(&issued)?,
    )?;
    Ok(())
}

/// The issued certificates, newest last.
pub fn list(dir: &StateDir) -> anyhow::Result<Vec<(Issued, bool)>> {
    let d = dir.subdir("issued")?;
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

/// Whether `serial` is revoked.
pub fn is_revoked(dir: &StateDir, serial: &str) -> bool {
    valid_serial(serial)
        && dir
            .join("revoked")
            .join(serial.to_ascii_lowercase())
            .exists()
}

/// Revokes by serial or by enrolment name; returns the revoked entries.
pub fn revoke(dir: &StateDir, what: &str) -> anyhow::Result<Vec<Issued>> {
    let matches: Vec<Issued> = list(dir)?
        .into_iter()
        .map(|(i, _)| i)
        .filter(|i| i.serial.eq_ignore_ascii_case(what) || i.name == what)
        .collect();
    let targets: Vec<Issued> = if matches.is_empty() && valid_serial(what) {
        // Not in the register (issued by an older version): revoke the serial anyway.
        vec![Issued {
            serial: what.to_ascii_lowercase(),
            name: String::new(),
            role: String::new(),
            not_after_unix: 0,
            issued_unix: 0,
        }]
    } else {
        matches
    };
    anyhow::ensure!(
        !targets.is_empty(),
        "no issued certificate has the serial or name {what:?}: see `ceres-vps cert list`"
    );
    let d = dir.subdir("revoked")?;
    for t in &targets {
        d.write(&t.serial.to_ascii_lowercase(), b"")?;
    }
    Ok(targets)
}
