//! Test helpers shared by the workspace's crates: whether a test may run here
//! (root, and the `CI=true` rule), waiting for a condition with a deadline,
//! names unique across parallel tests, the fuzzing configuration every
//! property test uses, stopping a child process by waiting on it rather than
//! polling it, an authoritative DNS server (nsd) for the DNS tests, and
//! promtool's check of the agents' Prometheus pages.

mod gate;
mod nsd;
pub mod promtool;
mod wait;

pub use gate::{require_root, skip};
pub use nsd::Nsd;
pub use wait::{wait_until, wait_until_async};

use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use proptest::test_runner::{Config, FileFailurePersistence, RngSeed};
use wait_timeout::ChildExt;

/// A short identifier unique to this process and call, for names that
/// parallel tests must not share: namespaces, interfaces (at most 15 bytes:
/// this takes about 9, leaving room for a prefix), files, message ids.
/// Tests run in processes of their own (nextest) or threads of one (cargo
/// test): the pid separates the former, the counter the latter.
pub fn unique_id() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{:x}x{:x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The configuration of the property ("fuzz") tests: bounded for CI with
/// `cases` cases from a fixed `seed`, so every run tries the same inputs. For
/// a longer hunt set `PROPTEST_CASES` and `PROPTEST_RNG_SEED`, which then win.
/// Failures are kept beside the test's source file (`NAME.proptest-regressions`,
/// to check in) and replayed first on every run.
pub fn fuzz_config(cases: u32, seed: u64) -> Config {
    let base = Config::default();
    Config {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            base.cases
        } else {
            cases
        },
        rng_seed: if std::env::var_os("PROPTEST_RNG_SEED").is_some() {
            base.rng_seed
        } else {
            RngSeed::Fixed(seed)
        },
        // The default looks for `src/` in the path, which test files lack.
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..base
    }
}

/// Sends SIGTERM to `child` (to its whole process group when `group`, for a
/// child started as a group leader), waits up to `grace` for it to exit —
/// woken by its exit, not by a timer — then SIGKILLs what is left and reaps
/// it. Returns the exit status when it stopped within `grace`.
pub fn stop_child(child: &mut Child, group: bool, grace: Duration) -> Option<ExitStatus> {
    let Ok(pid) = i32::try_from(child.id()) else {
        let _ = child.kill();
        let _ = child.wait();
        return None;
    };
    let target = if group { -pid } else { pid };
    // SAFETY: kill(2) on our own child (or the process group it leads).
    unsafe { libc::kill(target, libc::SIGTERM) };
    let stopped = child.wait_timeout(grace).ok().flatten();
    if group || stopped.is_none() {
        // Also catches members of the group that outlived their leader.
        // SAFETY: as above.
        unsafe { libc::kill(target, libc::SIGKILL) };
    }
    let _ = child.wait();
    stopped
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::Instant;

    #[test]
    fn a_child_that_exits_on_sigterm_is_reaped_at_once() {
        let mut child = Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let t0 = Instant::now();
        let status = stop_child(&mut child, false, Duration::from_secs(10));
        assert!(status.is_some(), "sleep ignores nothing");
        // Woken by the exit, not at the end of the grace period.
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    }

    #[test]
    fn a_child_ignoring_sigterm_is_killed_after_the_grace() {
        // An ignored signal stays ignored across exec; "ready" says the trap is set.
        let mut child = Command::new("sh")
            .args(["-c", "trap '' TERM; echo ready; exec sleep 30"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn sh");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
            &mut line,
        )
        .expect("read");
        assert_eq!(line, "ready\n");
        let status = stop_child(&mut child, false, Duration::from_millis(300));
        assert!(status.is_none());
        assert!(child.try_wait().expect("try_wait").is_some(), "not reaped");
    }

    #[test]
    fn ids_differ_between_calls() {
        let (a, b) = (unique_id(), unique_id());
        assert_ne!(a, b);
        assert!(a.starts_with(&format!("{:x}x", std::process::id())), "{a}");
    }

    #[test]
    fn the_fixed_seed_is_used_unless_the_environment_says_otherwise() {
        if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
            assert_eq!(fuzz_config(7, 42).rng_seed, RngSeed::Fixed(42));
        }
        if std::env::var_os("PROPTEST_CASES").is_none() {
            assert_eq!(fuzz_config(7, 42).cases, 7);
        }
    }
}
