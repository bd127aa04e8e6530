//! The recipe as text for a terminal, as Markdown for docs/mail-servers.md,
//! and as files under a directory.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::Recipe;

/// Why `--write` wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A file exists and `--force` was not given.
    #[error("{0} exists: merge the printed file into it by hand, or give --force to replace it")]
    Exists(PathBuf),
    /// The file system refused.
    #[error("cannot write {0}: {1}")]
    Io(PathBuf, std::io::Error),
}

fn env_lines(r: &Recipe) -> String {
    if r.relays.is_empty() {
        return format!(
            "# Not supported behind CERES: no CERES_RELAYS, no CERES_MAIL_SERVER for {}.\n# Why, and what to do instead: see the notes.\n",
            r.stack
        );
    }
    let mut s = format!("# VPS, /etc/ceres/ceres.env\nCERES_RELAYS={}\n", r.relays);
    let _ = write!(
        s,
        "\n# home, /etc/ceres/ceres.env\nCERES_MAIL_SERVER={}\n",
        r.mail_server
    );
    // The home agent then probes the stack's PROXY listeners (`cerectl
    // status` shows them); only for a stack its port table knows.
    if let Ok(stack) = r.stack.parse::<ceres_relay::stack::MailStack>() {
        let _ = writeln!(s, "CERES_MAIL_STACK={stack}");
    }
    if !r.egress_from.is_empty() {
        let _ = writeln!(s, "CERES_EGRESS_FROM={}", r.egress_from.join(","));
    }
    s
}

/// The recipe for a terminal: settings, files whole, restart, notes, sources.
pub fn text(r: &Recipe) -> String {
    let mut s = format!("# {} — checked against {}\n\n", r.title, r.version);
    s.push_str(&env_lines(r));
    if let Some(t) = &r.trusted_proxy {
        let _ = write!(
            s,
            "\n# PROXY headers are trusted from {} only: {}.\n# Confirm: {}\n",
            t.address, t.source, t.find_with
        );
    }
    for f in &r.files {
        let _ = write!(
            s,
            "\n# ---- {}{} — {}\n{}",
            f.path,
            if f.executable { " (chmod 755)" } else { "" },
            f.purpose,
            f.contents
        );
    }
    let _ = write!(s, "\n# Then: {}\n", r.restart);
    for n in &r.notes {
        let _ = writeln!(s, "# Note: {n}");
    }
    let _ = writeln!(s, "# Bans: {}", r.bans);
    let _ = writeln!(s, "# Verified: {}", r.verified);
    for c in &r.citations {
        let _ = writeln!(
            s,
            "# Source: {} {} @ {} — {}",
            c.repo,
            c.path,
            &c.commit[..7],
            c.fact
        );
    }
    s
}

fn fence_lang(path: &str) -> &'static str {
    if path.ends_with(".yml") || path.ends_with(".yaml") {
        "yaml"
    } else if path.ends_with(".sh") {
        "bash"
    } else if path.ends_with(".ndjson") {
        "json"
    } else if path.contains("nginx/") {
        "nginx"
    } else {
        "text"
    }
}

/// The recipe as a docs/mail-servers.md section body (generated: a test
/// compares the page with it).
pub fn markdown(r: &Recipe) -> String {
    let mut s = format!(
        "Checked against {}. Print it with `cerectl mailserver-config --stack {}` \
         (`--write DIR` writes the files, `--json` for tools).\n\n",
        r.version, r.stack
    );
    let _ = write!(s, "```sh\n{}```\n", env_lines(r));
    if let Some(t) = &r.trusted_proxy {
        let _ = write!(
            s,
            "\nPROXY headers are trusted from **{}** only — {}. Confirm with `{}`.\n",
            t.address, t.source, t.find_with
        );
    }
    for f in &r.files {
        let _ = write!(
            s,
            "\n`{}`{} — {}:\n\n```{}\n{}```\n",
            f.path,
            if f.executable { " (executable)" } else { "" },
            f.purpose,
            fence_lang(f.path),
            f.contents
        );
    }
    let _ = write!(s, "\nThen: `{}`\n\n", r.restart);
    for n in &r.notes {
        let _ = writeln!(s, "- {n}");
    }
    let _ = write!(s, "\n**Bans (fail2ban and the like):** {}\n", r.bans);
    let _ = write!(s, "\n**Verified:** {}\n", r.verified);
    if !r.citations.is_empty() {
        s.push_str("\n**Sources** (every port, path and setting above):\n\n");
        for c in &r.citations {
            let _ = writeln!(
                s,
                "- `{}` `{}` at `{}` — {}",
                c.repo,
                c.path,
                &c.commit[..7],
                c.fact
            );
        }
    }
    s
}

/// Writes the recipe's files under `dir` at the stack's relative paths;
/// refuses to replace an existing file unless `force`. Returns the paths written.
pub fn write(r: &Recipe, dir: &Path, force: bool) -> Result<Vec<PathBuf>, WriteError> {
    let targets: Vec<PathBuf> = r.files.iter().map(|f| dir.join(f.path)).collect();
    if !force {
        if let Some(p) = targets.iter().find(|p| p.exists()) {
            return Err(WriteError::Exists(p.clone()));
        }
    }
    for (f, p) in r.files.iter().zip(&targets) {
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| WriteError::Io(parent.into(), e))?;
        }
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(if f.executable { 0o755 } else { 0o644 });
        }
        let mut file = opts.open(p).map_err(|e| WriteError::Io(p.clone(), e))?;
        file.write_all(f.contents.as_bytes())
            .map_err(|e| WriteError::Io(p.clone(), e))?;
        #[cfg(unix)]
        if force && f.executable {
            // An existing file keeps its old mode under `mode()`.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| WriteError::Io(p.clone(), e))?;
        }
    }
    Ok(targets)
}
