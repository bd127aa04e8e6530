//! The running agent's local status: a small JSON file the agent rewrites in
//! its state directory every [`WRITE_EVERY`] and removes on a clean exit, so
//! `ceres-vps status` / `ceres-home status` can say what this host knows
//! without the control plane.
//!
//! A file rather than a unix socket: the reader needs no running agent to
//! say something useful (a crashed agent leaves its last word, and the pid
//! and the write time tell a crash or a hang from a live agent), it needs no
//! protocol, and it is covered by the state directory's 0700 like every
//! other file there. The price is up to [`WRITE_EVERY`] of lag, which a
//! person reading status does not notice.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// Name of the file in the state directory.
pub const FILE_NAME: &str = "agent-status.json";
/// How often the agent rewrites it.
pub const WRITE_EVERY: Duration = Duration::from_secs(2);
/// A file this old from a live process means the agent stopped updating it
/// (hung): a few missed writes, not one slow disk.
pub const STALE_AFTER: Duration = Duration::from_secs(15);

/// What is on disk: who wrote it and when, then the agent's own part.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// Process id of the agent that wrote it.
    pub pid: u32,
    /// When it was written (Unix seconds).
    pub written_at_unix: i64,
    /// The agent's status.
    pub agent: T,
}

/// What the file says about the agent.
#[derive(Debug, Clone)]
pub enum Agent<T> {
    /// No file: the agent is not running (or stopped cleanly).
    NotRunning,
    /// The file is there but its writer is gone: the agent crashed or was
    /// killed. Its last word is kept.
    Dead(Envelope<T>),
    /// The writer lives but has not written for [`STALE_AFTER`]: hung.
    Stale(Envelope<T>),
    /// Running and current.
    Running(Envelope<T>),
}

/// Whether the agent runs, as its status file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    /// Running and current.
    Running,
    /// No status file: not running.
    NotRunning,
    /// Its process is gone without cleaning up: crashed or killed.
    Crashed,
    /// Its process lives but stopped updating the file.
    Hung,
}

impl AgentState {
    /// The state in a local status's `agent` line.
    pub fn describe(self, pid: Option<u32>) -> String {
        match self {
            AgentState::Running => format!("running (pid {})", pid.unwrap_or(0)),
            AgentState::NotRunning => "NOT RUNNING".into(),
            AgentState::Crashed => "CRASHED (last status below)".into(),
            AgentState::Hung => "NOT UPDATING (hung?)".into(),
        }
    }

    /// The problem line for a `program` that is not running right, given
    /// the pid and write time of its last status.
    pub fn problem(self, program: &str, last: Option<(u32, i64)>, now_unix: i64) -> Option<String> {
        let age = (now_unix - last.map_or(now_unix, |l| l.1)).max(0);
        match self {
            AgentState::Running => None,
            AgentState::NotRunning => Some(format!(
                "the agent is not running: start it (`systemctl start {program}` or `{program} run`)"
            )),
            AgentState::Crashed => Some(format!(
                "the agent stopped without cleaning up (crashed or killed); its last status is from {age} s ago: see `journalctl -u {program}`"
            )),
            AgentState::Hung => Some(format!(
                "the agent (pid {}) has not updated its status for {age} s: it may be hung",
                last.map_or(0, |l| l.0)
            )),
        }
    }
}

impl<T> Agent<T> {
    /// The judgement and the last status, if any.
    pub fn split(self) -> (AgentState, Option<Envelope<T>>) {
        match self {
            Agent::NotRunning => (AgentState::NotRunning, None),
            Agent::Dead(e) => (AgentState::Crashed, Some(e)),
            Agent::Stale(e) => (AgentState::Hung, Some(e)),
            Agent::Running(e) => (AgentState::Running, Some(e)),
        }
    }
}

/// Seconds as a person reads them: "42 s", "5 min", "3 h".
pub fn human_secs(secs: i64) -> String {
    let s = secs.max(0) as u64;
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        _ => format!("{} h", s / 3600),
    }
}

/// Why the file could not be read (then nobody can tell, exit 3).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Reading failed (most often: not allowed to read the state directory).
    #[error("cannot read {path}: {error} (run as root or as the agent's user)")]
    Io {
        /// The status file.
        path: PathBuf,
        /// What failed.
        error: std::io::Error,
    },
    /// The content is not what this version writes.
    #[error("cannot parse {path}: {error}")]
    Parse {
        /// The status file.
        path: PathBuf,
        /// What failed.
        error: serde_json::Error,
    },
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The file in `dir`.
pub fn path_in(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// Writes `agent` atomically (temp file created 0600, then renamed), so a
/// reader never sees half a file. Not fsynced: it is rewritten every few
/// seconds and means nothing after a reboot.
pub fn write<T: Serialize>(dir: &Path, agent: &T) -> std::io::Result<()> {
    let env = Envelope {
        pid: std::process::id(),
        written_at_unix: now_unix(),
        agent,
    };
    let data = serde_json::to_vec(&env).map_err(std::io::Error::other)?;
    let path = path_in(dir);
    let tmp = dir.join(format!(".{FILE_NAME}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&data)?;
    drop(f);
    std::fs::rename(&tmp, &path)
}

/// Removes the file (clean exit). Missing is fine.
pub fn remove(dir: &Path) {
    match std::fs::remove_file(path_in(dir)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(error = %e, "cannot remove the local status file"),
    }
}

/// Whether process `pid` exists (Linux: its `/proc` entry).
fn alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Reads the file in `dir` and judges its writer.
pub fn read<T: DeserializeOwned>(dir: &Path) -> Result<Agent<T>, ReadError> {
    let path = path_in(dir);
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // An unreadable directory also says NotFound for some callers:
            // tell them apart by whether the directory can be listed.
            if let Err(error) = std::fs::read_dir(dir) {
                return Err(ReadError::Io {
                    path: dir.to_owned(),
                    error,
                });
            }
            return Ok(Agent::NotRunning);
        }
        Err(error) => return Err(ReadError::Io { path, error }),
    };
    let env: Envelope<T> =
        serde_json::from_slice(&data).map_err(|error| ReadError::Parse { path, error })?;
    Ok(judge(env, alive, now_unix()))
}

fn judge<T>(env: Envelope<T>, alive: impl Fn(u32) -> bool, now: i64) -> Agent<T> {
    if !alive(env.pid) {
        Agent::Dead(env)
    } else if now - env.written_at_unix > STALE_AFTER.as_secs() as i64 {
        Agent::Stale(env)
    } else {
        Agent::Running(env)
    }
}

/// Keeps the file current until `cancel`: every [`WRITE_EVERY`] it asks
/// `snapshot` for the status and writes it (off the async workers). Removes
/// the file when cancelled, so a clean stop reads as "not running".
pub async fn keep_written<T, F, Fut>(dir: PathBuf, mut snapshot: F, cancel: CancellationToken)
where
    T: Serialize + Send + 'static,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let mut tick = tokio::time::interval(WRITE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let value = snapshot().await;
        let d = dir.clone();
        let r = tokio::task::spawn_blocking(move || write(&d, &value))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        match r {
            Ok(()) => warned = false,
            Err(e) if !warned => {
                warned = true;
                tracing::warn!(error = %e, dir = %dir.display(), "cannot write the local status file: `status` on this host will not see the agent");
            }
            Err(_) => {}
        }
    }
    let d = dir.clone();
    let _ = tokio::task::spawn_blocking(move || remove(&d)).await;
}

/// Exit code of a local status that could not tell (as `cerectl status`'s 3).
pub const EXIT_UNKNOWN: u8 = 3;

/// Appends the verdict block of a local status: `OK`, or the problems.
pub fn write_problems(o: &mut String, problems: &[String]) {
    use std::fmt::Write as _;
    if problems.is_empty() {
        let _ = writeln!(o, "\nOK");
    } else {
        let _ = writeln!(o, "\nProblems:");
        for p in problems {
            let _ = writeln!(o, "  - {p}");
        }
    }
}

/// Prints a local status as JSON or text and returns its exit code: 0 ok,
/// 1 something broken, 3 (`EXIT_UNKNOWN`) when it cannot be printed. Shared
/// by `ceres-vps status` and `ceres-home status`.
pub fn print_status<S: Serialize>(
    program: &str,
    status: &S,
    ok: bool,
    json: bool,
    text: impl FnOnce() -> String,
) -> std::process::ExitCode {
    if json {
        match serde_json::to_string_pretty(status) {
            Ok(j) => println!("{j}"),
            Err(e) => {
                eprintln!("{program}: {e}");
                return std::process::ExitCode::from(EXIT_UNKNOWN);
            }
        }
    } else {
        print!("{}", text());
    }
    if ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct S {
        x: u32,
    }

    #[test]
    fn written_file_reads_back_as_running_and_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), &S { x: 7 }).unwrap();
        let mode = std::fs::metadata(path_in(tmp.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        match read::<S>(tmp.path()).unwrap() {
            Agent::Running(e) => assert_eq!(e.agent, S { x: 7 }),
            other => panic!("{other:?}"),
        }
        remove(tmp.path());
        assert!(matches!(read::<S>(tmp.path()).unwrap(), Agent::NotRunning));
    }

    #[test]
    fn a_dead_writer_or_an_old_file_is_told_apart() {
        let env = |at| Envelope {
            pid: 42,
            written_at_unix: at,
            agent: (),
        };
        assert!(matches!(judge(env(100), |_| false, 101), Agent::Dead(_)));
        assert!(matches!(judge(env(100), |_| true, 200), Agent::Stale(_)));
        assert!(matches!(judge(env(100), |_| true, 103), Agent::Running(_)));
    }
}
