//! The VPSes one client is enrolled with, each with its own credentials (CA,
//! certificate, key, address), a name and a priority, under one directory.
//!
//! Layout — the first VPS keeps the layout a single VPS always had, so a
//! directory written before there were several is read as it is (a VPS named
//! after its address, priority 10) and an older program still finds its VPS:
//!
//! ```text
//! DIR/ca.pem admin.pem admin.key vps.json [entry.json]   the first VPS
//! DIR/vps/NAME/ca.pem admin.pem admin.key vps.json entry.json   each further one
//! ```
//!
//! `entry.json` holds the name and priority (`{"name": "vps-b", "priority": 20}`).
//! A new VPS is written into a hidden directory and renamed into place, so a
//! crash never leaves a half-enrolled VPS under its name.

use std::path::{Path, PathBuf};

use ceres_pki::Role;
use ceres_state::{StateDir, StateError};
use serde::{Deserialize, Serialize};

use crate::creds::{CredError, Credentials, files_of, read_endpoint};

/// Where every VPS after the first lives, one directory each.
pub const MORE_DIR: &str = "vps";
/// Name and priority of one enrolment.
const ENTRY_FILE: &str = "entry.json";
/// Priority of the first VPS (and of one enrolled before priorities existed).
pub const FIRST_PRIORITY: u16 = 10;
/// Default distance between priorities in join order: 10, 20, 30, …
pub const PRIORITY_STEP: u16 = 10;
/// Longest VPS name.
const MAX_NAME: usize = 63;

/// Errors of the store. The program using it adds what to do (its own flags).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A name that cannot be a VPS name.
    #[error(
        "{name:?} is not a usable VPS name: {reason} (letters, digits, '.', '-' and '_', \
         up to 63 characters, starting with a letter or digit)"
    )]
    BadName {
        /// The name as given.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A VPS of that name is already enrolled.
    #[error("a VPS named {name:?} is already enrolled (at {address}); nothing was changed")]
    DuplicateName {
        /// The name.
        name: String,
        /// Where the enrolled one is.
        address: String,
    },
    /// The same VPS (same CA) is already enrolled under another name.
    #[error(
        "this VPS (CA {fingerprint}) is already enrolled as {name:?} (at {address}); nothing was changed"
    )]
    SameVps {
        /// The name it has.
        name: String,
        /// Its CA.
        fingerprint: String,
        /// Where it is.
        address: String,
    },
    /// No VPS of that name.
    #[error("no VPS named {name:?} is enrolled in {dir} (enrolled: {known})")]
    Unknown {
        /// The name asked for.
        name: String,
        /// The directory.
        dir: String,
        /// The names there are, or "none".
        known: String,
    },
    /// The new VPS's directory could not be put in place; the credentials are
    /// kept where they were written.
    #[error(
        "could not put the new VPS in place as {target}: {error}; its credentials are in {kept}"
    )]
    NotPlaced {
        /// Where it should have gone.
        target: String,
        /// Where it is.
        kept: String,
        /// Why.
        error: std::io::Error,
    },
    /// Credentials.
    #[error(transparent)]
    Cred(#[from] CredError),
    /// Files.
    #[error(transparent)]
    State(#[from] StateError),
    /// A file or directory operation.
    #[error("{op} {path}: {error}")]
    Io {
        /// What.
        op: &'static str,
        /// Where.
        path: String,
        /// Why.
        error: std::io::Error,
    },
}

/// `entry.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct EntryFile {
    name: String,
    priority: u16,
}

/// One enrolled VPS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VpsEntry {
    /// Its name (unique in the store).
    pub name: String,
    /// Lower is preferred: the MX priority and the order of uplinks.
    pub priority: u16,
    /// `host:port` of its control plane.
    pub control_address: String,
    /// Its CA's fingerprint (`sha256:…`).
    pub ca_fingerprint: String,
    /// The directory of its credentials.
    pub dir: PathBuf,
    /// True for the VPS in the top directory (the single-VPS layout).
    pub first_slot: bool,
}

impl VpsEntry {
    /// The directory of its credentials, for [`Credentials::load`] and `save`.
    pub fn state_dir(&self) -> Result<StateDir, StateError> {
        StateDir::open(&self.dir)
    }
}

/// Which VPS a command is about when none was named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// None is enrolled.
    Nothing,
    /// Exactly this one (the only one, or the one named).
    One(VpsEntry),
    /// Several, and none was named: the caller asks which, or takes all.
    Several(Vec<VpsEntry>),
}

/// The VPSes of one client (`role`: `cerectl` is admin, the home agent home).
#[derive(Debug, Clone)]
pub struct VpsStore {
    root: StateDir,
    role: Role,
}

impl VpsStore {
    /// The store in `root` for `role`.
    pub fn new(root: StateDir, role: Role) -> Self {
        Self { root, role }
    }

    /// The top directory.
    pub fn root(&self) -> &StateDir {
        &self.root
    }

    /// Every enrolled VPS, by priority, then name.
    pub fn list(&self) -> Result<Vec<VpsEntry>, StoreError> {
        let mut out = Vec::new();
        if Credentials::exists(&self.root, self.role) {
            out.push(self.entry_in(&self.root, None)?);
        }
        let more = self.root.join(MORE_DIR);
        if more.is_dir() {
            let rd = std::fs::read_dir(&more).map_err(|error| StoreError::Io {
                op: "list",
                path: more.display().to_string(),
                error,
            })?;
            let mut names: Vec<String> = rd
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                // Hidden: an enrolment or removal under way, or left by a crash.
                .filter(|n| validate_name(n).is_ok())
                .collect();
            names.sort();
            for name in names {
                let dir = StateDir::open(more.join(&name))?;
                if Credentials::exists(&dir, self.role) {
                    out.push(self.entry_in(&dir, Some(&name))?);
                }
            }
        }
        out.sort_by(|a, b| (a.priority, &a.name).cmp(&(b.priority, &b.name)));
        Ok(out)
    }

    /// The VPS in `dir`; `dir_name` for one under [`MORE_DIR`], whose
    /// directory name is its name.
    fn entry_in(&self, dir: &StateDir, dir_name: Option<&str>) -> Result<VpsEntry, StoreError> {
        let endpoint = read_endpoint(dir)?;
        let file: Option<EntryFile> = match dir.read_optional(ENTRY_FILE)? {
            None => None,
            Some(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| {
                CredError::Damaged(dir.join(ENTRY_FILE).display().to_string(), e.to_string())
            })?),
        };
        let name = match (dir_name, &file) {
            (Some(n), _) => n.to_owned(),
            (None, Some(f)) => f.name.clone(),
            (None, None) => default_name(&endpoint.control_address),
        };
        Ok(VpsEntry {
            name,
            priority: file.map_or(FIRST_PRIORITY, |f| f.priority),
            control_address: endpoint.control_address,
            ca_fingerprint: endpoint.ca_fingerprint,
            dir: dir.path().to_owned(),
            first_slot: dir_name.is_none(),
        })
    }

    /// The VPS named `name`.
    pub fn get(&self, name: &str) -> Result<VpsEntry, StoreError> {
        let all = self.list()?;
        match all.iter().find(|e| e.name == name) {
            Some(e) => Ok(e.clone()),
            None => Err(self.unknown(name, &all)),
        }
    }

    fn unknown(&self, name: &str, all: &[VpsEntry]) -> StoreError {
        StoreError::Unknown {
            name: name.to_owned(),
            dir: self.root.path().display().to_string(),
            known: if all.is_empty() {
                "none".into()
            } else {
                names(all)
            },
        }
    }

    /// The VPS named `name`, or without a name the only one (or which there are).
    pub fn select(&self, name: Option<&str>) -> Result<Selection, StoreError> {
        if let Some(name) = name {
            return Ok(Selection::One(self.get(name)?));
        }
        let mut all = self.list()?;
        Ok(match all.len() {
            0 => Selection::Nothing,
            1 => Selection::One(all.remove(0)),
            _ => Selection::Several(all),
        })
    }

    /// The priority a VPS enrolled now gets by default: after every other one.
    pub fn next_priority(&self) -> Result<u16, StoreError> {
        Ok(self
            .list()?
            .iter()
            .map(|e| e.priority)
            .max()
            .map_or(FIRST_PRIORITY, |p| p.saturating_add(PRIORITY_STEP)))
    }

    /// Checks, before a one-time token is spent, that a VPS with CA
    /// `fingerprint` may be enrolled as `name`: returns the entry it replaces
    /// (`replace`: the one of that name), or why not. The same VPS under
    /// another name is always refused: it would be counted twice.
    pub fn check_new(
        &self,
        name: &str,
        fingerprint: &str,
        replace: bool,
    ) -> Result<Option<VpsEntry>, StoreError> {
        validate_name(name)?;
        let all = self.list()?;
        if let Some(same) = all
            .iter()
            .find(|e| e.ca_fingerprint == fingerprint && e.name != name)
        {
            return Err(StoreError::SameVps {
                name: same.name.clone(),
                fingerprint: fingerprint.to_owned(),
                address: same.control_address.clone(),
            });
        }
        match all.into_iter().find(|e| e.name == name) {
            Some(e) if replace => Ok(Some(e)),
            Some(e) => Err(StoreError::DuplicateName {
                name: name.to_owned(),
                address: e.control_address,
            }),
            None => Ok(None),
        }
    }

    /// Stores freshly enrolled `creds` as `name` with `priority`, replacing
    /// `replaces` (from [`check_new`](Self::check_new)) if given. The first VPS
    /// goes into the top directory (the single-VPS layout), every further one
    /// into `vps/NAME/`.
    pub fn add(
        &self,
        name: &str,
        priority: u16,
        creds: &Credentials,
        replaces: Option<&VpsEntry>,
    ) -> Result<VpsEntry, StoreError> {
        validate_name(name)?;
        let entry = serde_json::to_vec_pretty(&EntryFile {
            name: name.to_owned(),
            priority,
        })
        .unwrap_or_default();
        if let Some(old) = replaces {
            let dir = old.state_dir()?;
            creds.save(&dir, self.role)?;
            dir.write(ENTRY_FILE, &entry)?;
            return self.get(name);
        }
        if self.top_is_free(creds)? {
            creds.save(&self.root, self.role)?;
            self.root.write(ENTRY_FILE, &entry)?;
            return self.get(name);
        }
        let more = self.root.subdir(MORE_DIR)?;
        let staging = format!(".enrolling-{name}-{}", std::process::id());
        let staging_path = more.join(&staging);
        if staging_path.exists() {
            remove_tree(&staging_path)?;
        }
        let dir = more.subdir(&staging)?;
        creds.save(&dir, self.role)?;
        dir.write(ENTRY_FILE, &entry)?;
        let target = more.join(name);
        if target.exists() {
            return Err(StoreError::NotPlaced {
                target: target.display().to_string(),
                kept: staging_path.display().to_string(),
                error: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            });
        }
        more.rename(&staging, name)
            .map_err(|e| StoreError::NotPlaced {
                target: target.display().to_string(),
                kept: staging_path.display().to_string(),
                error: std::io::Error::other(e.to_string()),
            })?;
        self.get(name)
    }

    /// The top directory takes a new VPS when it holds none for this role,
    /// and no other role's credentials for another CA (they share `ca.pem`).
    fn top_is_free(&self, creds: &Credentials) -> Result<bool, StoreError> {
        if Credentials::exists(&self.root, self.role) {
            return Ok(false);
        }
        let other = match self.role {
            Role::Admin => Role::Home,
            Role::Home => Role::Admin,
        };
        if !Credentials::exists(&self.root, other) {
            return Ok(true);
        }
        let theirs = read_endpoint(&self.root)?.ca_fingerprint;
        let ours = ceres_pki::CertificateInfo::from_pem(&creds.ca_pem)
            .map_err(CredError::from)?
            .fingerprint
            .to_string();
        Ok(theirs == ours)
    }

    /// Changes the priority of `name`.
    pub fn set_priority(&self, name: &str, priority: u16) -> Result<VpsEntry, StoreError> {
        let e = self.get(name)?;
        let entry = serde_json::to_vec_pretty(&EntryFile {
            name: e.name.clone(),
            priority,
        })
        .unwrap_or_default();
        e.state_dir()?.write(ENTRY_FILE, &entry)?;
        self.get(name)
    }

    /// Forgets `name`: its key, certificate and the rest. (Its certificate
    /// stays valid at the VPS until it expires or is revoked there.)
    pub fn remove(&self, name: &str) -> Result<VpsEntry, StoreError> {
        let all = self.list()?;
        let Some(e) = all.iter().find(|e| e.name == name).cloned() else {
            return Err(self.unknown(name, &all));
        };
        if e.first_slot {
            let (cert, key) = files_of(self.role);
            // The certificate first: without it nothing reads the rest as a VPS.
            self.root.remove(cert)?;
            self.root.remove(key)?;
            self.root.remove(ENTRY_FILE)?;
            let other = match self.role {
                Role::Admin => Role::Home,
                Role::Home => Role::Admin,
            };
            if !Credentials::exists(&self.root, other) {
                self.root.remove("ca.pem")?;
                self.root.remove("vps.json")?;
            }
        } else {
            let more = self.root.subdir(MORE_DIR)?;
            let gone = format!(".removing-{name}-{}", std::process::id());
            more.rename(name, &gone)?;
            remove_tree(&more.join(&gone))?;
        }
        Ok(e)
    }
}

fn remove_tree(path: &Path) -> Result<(), StoreError> {
    std::fs::remove_dir_all(path).map_err(|error| StoreError::Io {
        op: "remove",
        path: path.display().to_string(),
        error,
    })
}

/// `a, b, c`.
pub fn names(entries: &[VpsEntry]) -> String {
    entries
        .iter()
        .map(|e| e.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether `name` can name a VPS (it becomes a directory name).
pub fn validate_name(name: &str) -> Result<(), StoreError> {
    let bad = |reason| StoreError::BadName {
        name: name.to_owned(),
        reason,
    };
    let Some(first) = name.chars().next() else {
        return Err(bad("it is empty"));
    };
    if name.len() > MAX_NAME {
        return Err(bad("it is longer than 63 characters"));
    }
    if !first.is_ascii_alphanumeric() {
        return Err(bad("it does not start with a letter or digit"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Err(bad(
            "it has a character other than letters, digits, '.', '-', '_'",
        ));
    }
    Ok(())
}

/// The name a VPS gets when none is given: the host of its control address
/// (`203.0.113.10:7443` → `203.0.113.10`, `vps1.example.net:7443` →
/// `vps1.example.net`, `[2001:db8::1]:7443` → `2001-db8--1`).
pub fn default_name(control_address: &str) -> String {
    let host = match control_address.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => control_address
            .rsplit_once(':')
            .map_or(control_address, |(h, _)| h),
    };
    let name: String = host
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '-'
            }
        })
        .take(MAX_NAME)
        .collect();
    if validate_name(&name).is_ok() {
        name
    } else {
        "vps".into()
    }
}

#[cfg(test)]
mod tests;
