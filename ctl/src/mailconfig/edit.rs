//! The machinery `--apply` shares: run the software's own tools with errors
//! that say what to install or fix, and a backup of every file touched that is
//! restored when the software's check refuses the result.

use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// Runs a command that must succeed; returns its standard output. The error
/// names the command and carries what it printed.
pub fn run_ok(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program}: is it installed and on PATH?"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Copies of the files an apply may change, kept in
/// `<config dir>/ceres-backup/<time>/` (outside every include pattern of
/// the three programs) and restorable in place.
#[derive(Debug)]
pub struct Backup {
    /// Where the copies are.
    pub dir: PathBuf,
    /// Each file: its path and its content before (`None`: it did not exist).
    saved: Vec<(PathBuf, Option<Vec<u8>>)>,
}

impl Backup {
    /// Saves `files` (relative to `config_dir`) before they are changed.
    pub fn take(config_dir: &Path, files: &[PathBuf]) -> anyhow::Result<Self> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let dir = config_dir.join("ceres-backup").join(format!(
            "{}.{:09}",
            stamp.as_secs(),
            stamp.subsec_nanos()
        ));
        let mut saved = Vec::new();
        for rel in files {
            let path = config_dir.join(rel);
            let content = match std::fs::read(&path) {
                Ok(c) => Some(c),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            };
            if let Some(c) = &content {
                // An absolute path (a site file outside the directory) is
                // copied under the backup too, never onto itself.
                let copy = dir.join(rel.strip_prefix("/").unwrap_or(rel));
                if let Some(parent) = copy.parent() {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("creating {}", parent.display()))?;
                }
                write_like(&copy, c, &path)?;
            }
            saved.push((path, content));
        }
        Ok(Self { dir, saved })
    }

    /// Puts every saved file back as it was (and removes files that did not
    /// exist before).
    pub fn restore(&self) -> anyhow::Result<()> {
        for (path, content) in &self.saved {
            match content {
                Some(c) => replace_file(path, c)?,
                None => match std::fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(e).with_context(|| format!("removing {}", path.display()));
                    }
                },
            }
        }
        Ok(())
    }
}

/// Writes `content` to `path` with the mode and owner of `like` (new file,
/// created with that mode: no window with wider permissions).
fn write_like(path: &Path, content: &[u8], like: &Path) -> anyhow::Result<()> {
    let meta = std::fs::metadata(like).ok();
    let mode = meta
        .as_ref()
        .map_or(0o644, |m| m.permissions().mode() & 0o7777);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(content)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    if let Some(m) = meta {
        let _ = std::os::unix::fs::chown(path, Some(m.uid()), Some(m.gid()));
    }
    Ok(())
}

/// Replaces `path` atomically (temp file beside it, then rename), keeping its
/// mode and owner when it exists; a new file gets 0644 (configuration, no
/// secrets).
pub fn replace_file(path: &Path, content: &[u8]) -> anyhow::Result<()> {
    let parent = path
        .parent()
        .with_context(|| format!("{} has no directory", path.display()))?;
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = parent.join(format!(".{}.ceres-tmp", name.to_string_lossy()));
    let _ = std::fs::remove_file(&tmp);
    write_like(&tmp, content, path)?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

/// A test hook: with `CERESTEST_MAILCONFIG_BREAK=1` the apply appends a line
/// the software refuses before its check runs, so the end-to-end tests can
/// prove the rollback. `CERESTEST_*` keys are never read by the agents.
pub fn break_for_test() -> bool {
    std::env::var("CERESTEST_MAILCONFIG_BREAK").as_deref() == Ok("1")
}

/// Appends a line to a file (the test hook's breakage).
pub fn append_line(path: &Path, line: &str) -> anyhow::Result<()> {
    let mut text = std::fs::read(path).unwrap_or_default();
    text.extend_from_slice(line.as_bytes());
    text.push(b'\n');
    replace_file(path, &text)
}

/// What an apply did, for the user.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The target's name.
    pub target: &'static str,
    /// One line per change made.
    pub changes: Vec<String>,
    /// Where the backup is (when anything changed).
    pub backup: Option<PathBuf>,
    /// How the software was reloaded (or why not).
    pub reload: String,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.changes.is_empty() {
            return write!(
                f,
                "{}: already as CERES needs it; nothing changed",
                self.target
            );
        }
        writeln!(f, "{}: {} change(s)", self.target, self.changes.len())?;
        for c in &self.changes {
            writeln!(f, "  {c}")?;
        }
        if let Some(b) = &self.backup {
            writeln!(f, "backup of the files before: {}", b.display())?;
        }
        write!(f, "{}", self.reload)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn backup_restores_changed_and_removes_new_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.cf"), "one\n").unwrap();
        std::fs::set_permissions(
            d.path().join("a.cf"),
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        let b = Backup::take(d.path(), &["a.cf".into(), "new.conf".into()]).unwrap();
        replace_file(&d.path().join("a.cf"), b"two\n").unwrap();
        replace_file(&d.path().join("new.conf"), b"x\n").unwrap();
        let mode = std::fs::metadata(d.path().join("a.cf"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o640, "mode kept on replace");
        assert_eq!(
            std::fs::read_to_string(b.dir.join("a.cf")).unwrap(),
            "one\n"
        );
        b.restore().unwrap();
        assert_eq!(
            std::fs::read_to_string(d.path().join("a.cf")).unwrap(),
            "one\n"
        );
        assert!(!d.path().join("new.conf").exists());
    }

    #[test]
    fn run_ok_names_the_command_and_its_output() {
        let e = run_ok("sh", &["-c", "echo nope >&2; exit 3"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`sh -c echo nope >&2; exit 3` failed") && e.contains("nope"),
            "{e}"
        );
        let e = run_ok("ceres-no-such-program", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("is it installed"), "{e}");
    }
}
