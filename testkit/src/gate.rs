//! Whether a test may run here, and the one rule for when it may not: print
//! why and skip — except under `CI=true`, where a skip would hide a missing
//! requirement, so the test fails instead.

/// Skips `test` for reason `why` (prints `SKIP test: why`), or panics under
/// `CI=true`. The caller returns right after.
pub fn skip(test: &str, why: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: {why}, and CI=true: refusing to skip");
    }
    eprintln!("SKIP {test}: {why}");
}

/// Whether `test`, which needs root (network namespaces, TUN devices,
/// nftables), can run. Not root: skips (see [`skip`]) and returns false.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    skip(
        test,
        "needs root (network namespaces, TUN devices); run as root, or see README",
    );
    false
}
