//! The quick starts as a script: the command blocks of `docs/*.md` that are
//! marked for the walkthrough test, and the lab hosts they run on.
//!
//! A block is marked in its info string, which renderers do not show:
//!
//! ````text
//! ```sh walkthrough vps
//! sudo ceres-vps init --public-ip 203.0.113.10 --domain example.com
//! ```
//! ````
//!
//! The word after `walkthrough` is the machine the reader is told to type
//! it on ([`Role`]); `foreground` after it marks a block whose one command
//! keeps running (an agent started by hand), which the test starts as a
//! daemon and waits for its readiness (sd_notify, as systemd would). Every
//! other line of a marked block that is not blank or a comment is one
//! command (a trailing `\` continues it), run in order.
//!
//! [`Host`] runs a command the way the reader would on that machine: as
//! root, with the binaries in `/usr/local/bin` (where the docs install
//! them), `/etc/ceres`, `/var/lib/ceres`, `/run/wireguard` and root's home
//! private to the host (bind mounts inside the command's own mount
//! namespace, which `ip netns exec` gives it), and the lab's DNS server
//! in `/etc/resolv.conf`. So the documented defaults are what is tested,
//! with no `--config` or `--state-dir` the reader does not type.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, bail, ensure};

use crate::Netns;

/// The machine a documented command runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The VPS.
    Vps,
    /// The mail server's host at home.
    Home,
    /// Wherever the reader administers from: a workstation or a server
    /// elsewhere, outside the home network (in the lab: the internet side).
    Admin,
}

impl Role {
    fn parse(word: &str) -> anyhow::Result<Self> {
        Ok(match word {
            "vps" => Self::Vps,
            "home" => Self::Home,
            "admin" => Self::Admin,
            other => bail!("unknown walkthrough role {other:?} (vps, home or admin)"),
        })
    }

    /// The word used in the docs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Vps => "vps",
            Self::Home => "home",
            Self::Admin => "admin",
        }
    }
}

/// One marked code block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// Where its commands run.
    pub role: Role,
    /// Its single command keeps running (started as a daemon).
    pub foreground: bool,
    /// The commands, continuation lines joined.
    pub commands: Vec<String>,
    /// `file:line` of the opening fence, for messages.
    pub origin: String,
}

/// The marked blocks of a markdown text, in order. `file` names it in
/// messages. A fence whose info string mentions `walkthrough` in any other
/// way than `LANG walkthrough ROLE [foreground]` is an error, so a typo
/// cannot silently drop a block from the test.
pub fn parse(file: &str, markdown: &str) -> anyhow::Result<Vec<Block>> {
    let mut blocks = Vec::new();
    let mut lines = markdown.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        let trimmed = line.trim_start();
        let Some(info) = trimmed.strip_prefix("```") else {
            continue;
        };
        // The block's body, up to the closing fence.
        let mut body = Vec::new();
        let mut closed = false;
        for (_, l) in lines.by_ref() {
            if l.trim_start().starts_with("```") {
                closed = true;
                break;
            }
            body.push(l);
        }
        let origin = format!("{file}:{}", n + 1);
        ensure!(closed, "{origin}: code block never closed");
        let words: Vec<&str> = info.split_whitespace().collect();
        if !info.contains("walkthrough") {
            continue;
        }
        let (role, foreground) = match words.as_slice() {
            [_, "walkthrough", role] => (Role::parse(role)?, false),
            [_, "walkthrough", role, "foreground"] => (Role::parse(role)?, true),
            _ => bail!(
                "{origin}: malformed walkthrough marker {info:?}: write ```sh walkthrough vps|home|admin [foreground]"
            ),
        };
        let commands = commands(&body);
        ensure!(
            !commands.is_empty(),
            "{origin}: marked block has no command"
        );
        ensure!(
            !foreground || commands.len() == 1,
            "{origin}: a foreground block holds exactly one command"
        );
        blocks.push(Block {
            role,
            foreground,
            commands,
            origin,
        });
    }
    Ok(blocks)
}

/// The commands of a block body: blank and comment lines dropped, lines
/// ending in `\` joined with the next.
fn commands(body: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in body {
        let t = line.trim();
        if pending.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(head) => {
                pending.push_str(head.trim_end());
                pending.push(' ');
            }
            None => {
                pending.push_str(t);
                out.push(std::mem::take(&mut pending));
            }
        }
    }
    if !pending.trim().is_empty() {
        out.push(pending.trim().to_owned());
    }
    out
}

/// One of the reader's machines in the lab: a network namespace plus the
/// files that machine keeps (config, state, root's home), which every
/// command run on it sees at their usual paths.
#[derive(Debug)]
pub struct Host<'a> {
    /// The role it plays.
    pub role: Role,
    /// Its network namespace.
    pub ns: &'a Netns,
    /// Its private directories (under the lab's).
    root: PathBuf,
    /// Where `/usr/local/bin` comes from.
    bin_dir: PathBuf,
    /// Extra bind mounts (source, mount point), e.g. the mail server's
    /// configuration on `/etc/postfix`.
    binds: Vec<(PathBuf, String)>,
    /// The `nameserver` its `/etc/resolv.conf` names.
    resolver: String,
    runs: AtomicU32,
}

/// The private directories each host mounts, relative to its root, and
/// where (mode 0700 for all: state, sockets and credentials).
const PRIVATE: &[(&str, &str)] = &[
    ("etc-ceres", "/etc/ceres"),
    ("var-lib-ceres", "/var/lib/ceres"),
    ("run-wireguard", "/run/wireguard"),
    ("root", "/root"),
];

impl<'a> Host<'a> {
    /// A host for `role` in `ns`, its files under `lab_dir/hosts/ROLE`,
    /// `/usr/local/bin` from `bin_dir`, DNS from `resolver`.
    pub fn new(
        role: Role,
        ns: &'a Netns,
        lab_dir: &Path,
        bin_dir: &Path,
        resolver: &str,
    ) -> anyhow::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let root = lab_dir.join("hosts").join(role.name());
        for (dir, _) in PRIVATE {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(root.join(dir))?;
        }
        Ok(Self {
            role,
            ns,
            root,
            bin_dir: bin_dir.to_owned(),
            binds: Vec::new(),
            resolver: resolver.to_owned(),
            runs: AtomicU32::new(0),
        })
    }

    /// Every later command sees `source` at `mount_point` (which must exist).
    pub fn bind(&mut self, source: &Path, mount_point: &str) {
        self.binds.push((source.to_owned(), mount_point.to_owned()));
    }

    /// A host file at its usual path, read from outside (e.g.
    /// `/etc/ceres/ceres.env`); only the private directories are readable.
    pub fn file(&self, path: &str) -> Option<PathBuf> {
        PRIVATE.iter().find_map(|(dir, at)| {
            path.strip_prefix(at)
                .and_then(|rest| rest.strip_prefix('/'))
                .map(|rest| self.root.join(dir).join(rest))
        })
    }

    /// The shell lines that give a command this host's view of the
    /// filesystem. `/etc` and `/var/lib` get a throwaway overlay per
    /// command, only to hold the mount points; what persists lives in the
    /// bind-mounted private directories (one overlay upper shared between
    /// commands would be undefined behaviour for overlayfs).
    fn prelude(&self) -> String {
        let n = self.runs.fetch_add(1, Ordering::Relaxed);
        let m = self.root.join("mnt").join(n.to_string());
        let q = |p: &Path| shell_quote(&p.display().to_string());
        let mut s = format!(
            "set -eu\nm={}\nmkdir -p \"$m/eu\" \"$m/ew\" \"$m/lu\" \"$m/lw\"\n\
             mount -t overlay overlay -o \"lowerdir=/etc,upperdir=$m/eu,workdir=$m/ew\" /etc\n\
             mount -t overlay overlay -o \"lowerdir=/var/lib,upperdir=$m/lu,workdir=$m/lw\" /var/lib\n\
             mkdir -p /etc/ceres /var/lib/ceres /run/wireguard\n",
            q(&m)
        );
        for (dir, at) in PRIVATE {
            s.push_str(&format!("mount --bind {} {at}\n", q(&self.root.join(dir))));
        }
        s.push_str(&format!(
            "mount --bind {} /usr/local/bin\n",
            q(&self.bin_dir)
        ));
        for (src, at) in &self.binds {
            s.push_str(&format!("mount --bind {} {}\n", q(src), shell_quote(at)));
        }
        s.push_str(&format!(
            "rm -f /etc/resolv.conf\nprintf 'nameserver {}\\n' > /etc/resolv.conf\ncd /root\nset +eu\n",
            self.resolver
        ));
        s
    }

    /// `command` as this host's shell would run it (not started).
    pub fn command(&self, command: &str, foreground: bool) -> Command {
        let script = format!(
            "{}{}{command}\n",
            self.prelude(),
            if foreground { "exec " } else { "" }
        );
        let mut cmd = self.ns.command("bash");
        cmd.arg("-c")
            .arg(script)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HOME", "/root")
            .env("USER", "root")
            .env("LOGNAME", "root");
        cmd
    }

    /// Runs `command` to its end: its output.
    pub fn run(&self, command: &str) -> anyhow::Result<Output> {
        self.command(command, false)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {command:?} on {}", self.role.name()))
    }
}

/// `s` in single quotes for the shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Fills `/usr/local/bin` of the lab's hosts: the workspace binaries (links
/// to the ones under test) and a `sudo` that only runs its command, which
/// is all the docs ask of it (the lab has no sudo and runs as root; any
/// option, such as `-u ceres`, is refused rather than ignored).
pub fn bin_dir(lab_dir: &Path) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let dir = lab_dir.join("usr-local-bin");
    std::fs::create_dir_all(&dir)?;
    for name in ["ceres-vps", "ceres-home", "cerectl"] {
        std::os::unix::fs::symlink(crate::bin(name), dir.join(name))?;
    }
    let sudo = dir.join("sudo");
    std::fs::write(
        &sudo,
        "#!/bin/sh\n# The lab's sudo: the docs' `sudo CMD` as root is CMD.\n\
         case \"${1:-}\" in -*|'') echo \"lab sudo: only 'sudo COMMAND' is supported, got: $*\" >&2; exit 2;; esac\n\
         exec \"$@\"\n",
    )?;
    std::fs::set_permissions(&sudo, std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marked_blocks_in_order_with_continuations() {
        let md = "\
Intro.

```sh
not marked
```

```sh walkthrough vps
# a comment
sudo ceres-vps init --public-ip 203.0.113.10 \\
    --domain example.com

sudo ceres-vps token create --role home   # trailing comment stays
```

  ```sh walkthrough home foreground
  sudo ceres-home run
  ```
";
        let blocks = parse("x.md", md).unwrap();
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].role, Role::Vps);
        assert!(!blocks[0].foreground);
        assert_eq!(
            blocks[0].commands,
            [
                "sudo ceres-vps init --public-ip 203.0.113.10 --domain example.com",
                "sudo ceres-vps token create --role home   # trailing comment stays"
            ]
        );
        assert_eq!(blocks[0].origin, "x.md:7");
        assert_eq!(blocks[1].role, Role::Home);
        assert!(blocks[1].foreground);
        assert_eq!(blocks[1].commands, ["sudo ceres-home run"]);
    }

    #[test]
    fn malformed_markers_are_errors_not_skips() {
        for md in [
            "```sh walkthrough\nx\n```\n",
            "```sh walkthrough laptop\nx\n```\n",
            "```sh walkthrough vps background\nx\n```\n",
            "```walkthrough vps\nx\n```\n",
            "```sh walkthrough vps foreground\na\nb\n```\n",
            "```sh walkthrough vps\n# only a comment\n```\n",
            "```sh walkthrough vps\nx\n",
        ] {
            assert!(parse("x.md", md).is_err(), "accepted: {md:?}");
        }
    }

    #[test]
    fn host_files_map_to_private_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let ns = Netns {
            name: "never-created".into(),
        };
        let host = Host::new(Role::Vps, &ns, tmp.path(), tmp.path(), "192.0.2.53").unwrap();
        assert_eq!(
            host.file("/etc/ceres/ceres.env").unwrap(),
            tmp.path().join("hosts/vps/etc-ceres/ceres.env")
        );
        assert!(host.file("/etc/passwd").is_none());
        // Not a real namespace: dropping it must not try to delete one.
        std::mem::forget(ns);
    }
}
