//! Crash points: where the end-to-end tests kill an agent in the middle of
//! a rotation, to prove that each side converges after a restart from
//! whatever it had put on disk.
//!
//! Compiled in only for tests. The end-to-end tests run the real binaries,
//! so `cfg(test)` cannot reach them: the `test-hooks` feature (enabled by
//! the tests crate, so `cargo build --workspace --bins` has it) turns the
//! environment hook on, and only in a build with debug assertions — a
//! release binary never reads `CERESTEST_CRASH_AT`, whoever built it with
//! what. In this crate's own unit tests a crash point panics instead of
//! aborting, so a test can "crash" a transition and load what is left.

use std::fmt;

/// A point in a rotation at which an agent can be made to die.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// VPS: the prepared rotation is on disk; RotatePrepare not sent yet.
    VpsPrepared,
    /// VPS: its new key and the PSK are on disk; not installed, not sent.
    VpsStaged,
    /// VPS: RotateCommit was sent to home.
    VpsCommitted,
    /// VPS: the rotation was claimed for promotion; the new keys are not
    /// saved as the current ones yet.
    VpsPromoted,
    /// Home: its new key is on disk; RotateKey not sent yet.
    HomeKeyed,
    /// Home: the VPS's commit is on disk; the keys are not installed yet.
    HomeCommitted,
    /// Home: the new keys carried a handshake; not saved as current yet.
    HomePromoted,
}

impl CrashPoint {
    /// Every crash point.
    pub const ALL: [CrashPoint; 7] = [
        CrashPoint::VpsPrepared,
        CrashPoint::VpsStaged,
        CrashPoint::VpsCommitted,
        CrashPoint::VpsPromoted,
        CrashPoint::HomeKeyed,
        CrashPoint::HomeCommitted,
        CrashPoint::HomePromoted,
    ];

    /// The name `CERESTEST_CRASH_AT` takes.
    pub fn name(self) -> &'static str {
        match self {
            CrashPoint::VpsPrepared => "vps-prepared",
            CrashPoint::VpsStaged => "vps-staged",
            CrashPoint::VpsCommitted => "vps-committed",
            CrashPoint::VpsPromoted => "vps-promoted",
            CrashPoint::HomeKeyed => "home-keyed",
            CrashPoint::HomeCommitted => "home-committed",
            CrashPoint::HomePromoted => "home-promoted",
        }
    }
}

impl fmt::Display for CrashPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Dies here if a test asked for it; in other builds, does nothing.
pub fn crash_point(at: CrashPoint) {
    #[cfg(test)]
    armed::hit(at);
    #[cfg(all(not(test), feature = "test-hooks", debug_assertions))]
    if std::env::var("CERESTEST_CRASH_AT").as_deref() == Ok(at.name()) {
        eprintln!("CERESTEST_CRASH_AT={at}: aborting on purpose");
        std::process::abort();
    }
    #[cfg(not(any(test, all(feature = "test-hooks", debug_assertions))))]
    let _ = at;
}

/// This crate's unit tests: a crash point armed on the test's thread panics.
#[cfg(test)]
pub(crate) mod armed {
    use std::cell::Cell;

    use super::CrashPoint;

    thread_local! {
        static ARMED: Cell<Option<CrashPoint>> = const { Cell::new(None) };
    }

    /// Makes `at` panic on this thread from now on (`None`: none does).
    pub(crate) fn arm(at: Option<CrashPoint>) {
        ARMED.with(|a| a.set(at));
    }

    pub(super) fn hit(at: CrashPoint) {
        if ARMED.with(|a| a.get()) == Some(at) {
            ARMED.with(|a| a.set(None));
            panic!("crashed at {at}");
        }
    }
}
