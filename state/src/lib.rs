//! The on-disk state directory of a CERES agent or of `cerectl`.
//!
//! Keys and certificates live here: directories are created 0700 and files
//! 0600 *with* that mode (no create-then-chmod window), every write goes to a
//! temporary file that is synced and renamed over the old one, so a crash
//! never leaves half a key, and loading refuses files that others can read.
//!
//! Everything written into a directory belongs to the directory's owner:
//! an admin running `ceres-vps token create` as root next to an agent that
//! runs as the `ceres` user writes files that agent can read (the new file is
//! given away by `fchown` on the open descriptor, before any data is in it).
//!
//! [`rotation`] keeps the one piece of state both agents persist the same
//! way: where a WireGuard key rotation stands, as a state machine.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub mod rotation;

/// Errors from the state directory. Each names the path involved.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// An I/O operation failed.
    #[error("{op} {path}: {error}")]
    Io {
        /// What we were doing ("create directory", "write", ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        error: io::Error,
    },
    /// A file could not be given to the state directory's owner: this process
    /// may not change owners (not root), and the owner could not read it.
    #[error(
        "cannot give {path} to uid {uid}, the owner of {dir}: {error}; \
         run this command as that user (e.g. `sudo -u ceres ...`)"
    )]
    Owner {
        /// The new file or directory.
        path: PathBuf,
        /// The state directory whose owner it should belong to.
        dir: PathBuf,
        /// That owner.
        uid: u32,
        /// The OS error.
        error: io::Error,
    },
    /// A secret file or directory is readable or writable by others.
    #[error(
        "{path} has mode {mode:04o}, which lets other users read it; \
         run `chmod {want:04o} {path}` (CERES creates it {want:04o})"
    )]
    TooOpen {
        /// The offending path.
        path: PathBuf,
        /// Its current permission bits.
        mode: u32,
        /// The mode CERES wants.
        want: u32,
    },
}

/// Mode of directories holding secrets.
pub const DIR_MODE: u32 = 0o700;
/// Mode of secret files.
pub const FILE_MODE: u32 = 0o600;

/// A directory holding secrets, created 0700 if missing.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
    /// Who the directory belongs to: what this process creates in it is
    /// given to them, so the agent that owns the directory can read it.
    owner: Owner,
}

/// A file owner (uid and gid).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Owner {
    uid: u32,
    gid: u32,
}

impl Owner {
    fn of(meta: &fs::Metadata) -> Self {
        Self {
            uid: meta.uid(),
            gid: meta.gid(),
        }
    }
}

impl StateDir {
    /// Opens `root`, creating it (and missing parents) with mode 0700.
    ///
    /// An existing directory that group or others can access is refused: the
    /// private keys in it would be exposed.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StateError> {
        let root = root.into();
        create_dir_secure(&root)?;
        check_mode(&root, DIR_MODE)?;
        let owner = Owner::of(&stat(&root)?);
        Ok(Self { root, owner })
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Path of `name` inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Whether `name` exists.
    pub fn exists(&self, name: &str) -> bool {
        self.join(name).exists()
    }

    /// A subdirectory, created 0700 if missing, owned like this one (one
    /// that root created for another owner before is given back to them).
    pub fn subdir(&self, name: &str) -> Result<StateDir, StateError> {
        let path = self.join(name);
        create_dir_secure(&path)?;
        check_mode(&path, DIR_MODE)?;
        if Owner::of(&stat(&path)?).uid != self.owner.uid {
            std::os::unix::fs::chown(&path, Some(self.owner.uid), Some(self.owner.gid))
                .map_err(|error| self.owner_error(&path, error))?;
        }
        Ok(StateDir {
            root: path,
            owner: self.owner,
        })
    }

    /// Atomically replaces `name` with `data` (mode 0600).
    pub fn write(&self, name: &str, data: &[u8]) -> Result<(), StateError> {
        let path = self.join(name);
        let tmp = temp_path(&path);
        write_file(&tmp, data, FILE_MODE, Some(self))?;
        rename_into_place(&tmp, &path)
    }

    fn owner_error(&self, path: &Path, error: io::Error) -> StateError {
        StateError::Owner {
            path: path.to_owned(),
            dir: self.root.clone(),
            uid: self.owner.uid,
            error,
        }
    }

    /// Creates `name` with `data` only if it does not exist yet.
    ///
    /// Returns `false` when the file already existed (nothing written). The
    /// create is exclusive, so two processes racing cannot both win.
    pub fn create_new(&self, name: &str, data: &[u8]) -> Result<bool, StateError> {
        let path = self.join(name);
        let tmp = temp_path(&path);
        write_file(&tmp, data, FILE_MODE, Some(self))?;
        // link(2) fails with EEXIST instead of replacing: an exclusive publish.
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                sync_dir(&self.root)?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(source) => Err(StateError::Io {
                op: "create",
                path,
                error: source,
            }),
        }
    }

    /// Reads a secret file, refusing it if others can read it.
    pub fn read_secret(&self, name: &str) -> Result<Vec<u8>, StateError> {
        let path = self.join(name);
        check_mode(&path, FILE_MODE)?;
        read(&path)
    }

    /// Reads a file that is not secret (certificates, JSON state).
    pub fn read(&self, name: &str) -> Result<Vec<u8>, StateError> {
        read(&self.join(name))
    }

    /// Reads a file if it exists.
    pub fn read_optional(&self, name: &str) -> Result<Option<Vec<u8>>, StateError> {
        match fs::read(self.join(name)) {
            Ok(data) => Ok(Some(data)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Io {
                op: "read",
                path: self.join(name),
                error: source,
            }),
        }
    }

    /// Atomically renames `from` to `to` inside the directory.
    ///
    /// Fails with [`io::ErrorKind::NotFound`] in the source when `from` is
    /// gone: exactly one of several racing renamers succeeds.
    pub fn rename(&self, from: &str, to: &str) -> Result<(), StateError> {
        let (src, dst) = (self.join(from), self.join(to));
        fs::rename(&src, &dst).map_err(|source| StateError::Io {
            op: "rename",
            path: src,
            error: source,
        })?;
        sync_dir(&self.root)
    }

    /// Removes `name`; a missing file is not an error.
    pub fn remove(&self, name: &str) -> Result<(), StateError> {
        match fs::remove_file(self.join(name)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError::Io {
                op: "remove",
                path: self.join(name),
                error: source,
            }),
        }
    }

    /// Names of the regular files in the directory.
    pub fn list(&self) -> Result<Vec<String>, StateError> {
        let rd = fs::read_dir(&self.root).map_err(|source| StateError::Io {
            op: "list",
            path: self.root.clone(),
            error: source,
        })?;
        let mut names = Vec::new();
        for entry in rd.flatten() {
            if entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
                if let Some(name) = entry.file_name().to_str() {
                    names.push(name.to_owned());
                }
            }
        }
        names.sort();
        Ok(names)
    }
}

/// Creates `path` and missing parents with mode 0700.
pub fn create_dir_secure(path: &Path) -> Result<(), StateError> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
        .map_err(|source| StateError::Io {
            op: "create directory",
            path: path.to_owned(),
            error: source,
        })
}

/// Atomically replaces `path` with `data`, the new file created with `mode`.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), StateError> {
    let tmp = temp_path(path);
    write_file(&tmp, data, mode, None)?;
    rename_into_place(&tmp, path)
}

fn rename_into_place(tmp: &Path, path: &Path) -> Result<(), StateError> {
    fs::rename(tmp, path).map_err(|source| {
        let _ = fs::remove_file(tmp);
        StateError::Io {
            op: "rename",
            path: path.to_owned(),
            error: source,
        }
    })?;
    if let Some(parent) = path.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Refuses `path` if its permission bits grant more than `want`.
pub fn check_mode(path: &Path, want: u32) -> Result<(), StateError> {
    let meta = fs::metadata(path).map_err(|source| StateError::Io {
        op: "stat",
        path: path.to_owned(),
        error: source,
    })?;
    let mode = meta.mode() & 0o7777;
    if mode & !want & 0o077 != 0 {
        return Err(StateError::TooOpen {
            path: path.to_owned(),
            mode,
            want,
        });
    }
    Ok(())
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".tmp.{}", std::process::id()));
    path.with_file_name(name)
}

fn stat(path: &Path) -> Result<fs::Metadata, StateError> {
    fs::metadata(path).map_err(|source| StateError::Io {
        op: "stat",
        path: path.to_owned(),
        error: source,
    })
}

/// Creates `path` with `mode` and writes `data`; inside a state directory
/// the file is first given to the directory's owner.
fn write_file(
    path: &Path,
    data: &[u8],
    mode: u32,
    dir: Option<&StateDir>,
) -> Result<(), StateError> {
    let io_err = |op, source| StateError::Io {
        op,
        path: path.to_owned(),
        error: source,
    };
    let _ = fs::remove_file(path);
    let mut file: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| io_err("create", e))?;
    // The umask may have cleared bits we asked for (never added any): make it exact.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| io_err("chmod", e))?;
    if let Some(dir) = dir {
        let mine = Owner::of(&file.metadata().map_err(|e| io_err("stat", e))?);
        if mine.uid != dir.owner.uid {
            // Still empty and private: nobody but the two owners can open it.
            let given = std::os::unix::fs::fchown(&file, Some(dir.owner.uid), Some(dir.owner.gid));
            if let Err(error) = given {
                drop(file);
                let _ = fs::remove_file(path);
                return Err(dir.owner_error(path, error));
            }
        }
    }
    file.write_all(data).map_err(|e| io_err("write", e))?;
    file.sync_all().map_err(|e| io_err("sync", e))
}

fn read(path: &Path) -> Result<Vec<u8>, StateError> {
    fs::read(path).map_err(|source| StateError::Io {
        op: "read",
        path: path.to_owned(),
        error: source,
    })
}

fn sync_dir(dir: &Path) -> Result<(), StateError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| StateError::Io {
            op: "sync directory",
            path: dir.to_owned(),
            error: source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_dir_and_files_with_private_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path().join("a/b")).unwrap();
        dir.write("key.pem", b"secret").unwrap();
        let dmode = fs::metadata(dir.path()).unwrap().mode() & 0o777;
        let fmode = fs::metadata(dir.join("key.pem")).unwrap().mode() & 0o777;
        assert_eq!((dmode, fmode), (0o700, 0o600));
        assert_eq!(dir.read_secret("key.pem").unwrap(), b"secret");
    }

    #[test]
    fn write_replaces_atomically_and_leaves_no_temp_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path().join("s")).unwrap();
        dir.write("f", b"one").unwrap();
        dir.write("f", b"two").unwrap();
        assert_eq!(dir.read("f").unwrap(), b"two");
        assert_eq!(dir.list().unwrap(), vec!["f".to_owned()]);
    }

    #[test]
    fn create_new_is_exclusive() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path().join("s")).unwrap();
        assert!(dir.create_new("t", b"1").unwrap());
        assert!(!dir.create_new("t", b"2").unwrap());
        assert_eq!(dir.read("t").unwrap(), b"1");
    }

    #[test]
    fn refuses_group_readable_secret_with_fix() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path().join("s")).unwrap();
        dir.write("k", b"x").unwrap();
        fs::set_permissions(dir.join("k"), fs::Permissions::from_mode(0o644)).unwrap();
        let err = dir.read_secret("k").unwrap_err().to_string();
        assert!(err.contains("0644") && err.contains("chmod 0600"), "{err}");
    }

    #[test]
    fn refuses_world_readable_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("open");
        fs::create_dir(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        let err = StateDir::open(&p).unwrap_err().to_string();
        assert!(err.contains("chmod 0700"), "{err}");
    }

    /// Root writing into a directory that belongs to someone else (the
    /// agent's user) gives every new file and subdirectory to that owner.
    #[test]
    fn files_root_writes_belong_to_the_directory_owner() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("s");
        let dir = StateDir::open(&p).unwrap();
        dir.write("pre", b"x").unwrap();
        let nobody = 65534;
        if std::os::unix::fs::chown(&p, Some(nobody), Some(nobody)).is_err() {
            eprintln!("SKIP files_root_writes_belong_to_the_directory_owner: needs root");
            return;
        }
        let dir = StateDir::open(&p).unwrap();
        dir.write("k", b"x").unwrap();
        assert!(dir.create_new("t", b"1").unwrap());
        let sub = dir.subdir("tokens").unwrap();
        sub.write("f", b"y").unwrap();
        for path in [
            dir.join("k"),
            dir.join("t"),
            sub.path().to_owned(),
            sub.join("f"),
        ] {
            let meta = fs::metadata(&path).unwrap();
            assert_eq!(
                (meta.uid(), meta.gid()),
                (nobody, nobody),
                "{}",
                path.display()
            );
        }
        assert_eq!(fs::metadata(dir.join("k")).unwrap().mode() & 0o777, 0o600);
        // A file that existed before is replaced by one of the right owner.
        dir.write("pre", b"z").unwrap();
        assert_eq!(fs::metadata(dir.join("pre")).unwrap().uid(), nobody);
    }

    #[test]
    fn rename_succeeds_once() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path().join("s")).unwrap();
        dir.write("a", b"x").unwrap();
        dir.rename("a", "b").unwrap();
        assert!(dir.rename("a", "c").is_err());
    }
}
