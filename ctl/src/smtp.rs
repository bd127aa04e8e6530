//! The SMTP client `send-test` and `doctor` use (the shared `ceres-smtp`
//! crate: the VPS agent sends its alert mail with it too), and what cerectl
//! adds to it.

pub use ceres_smtp::*;

/// What a timed-out connect to port 25 most often means when `cerectl` runs
/// at home or in an office: the ISP drops outbound 25 (a refused connect is
/// something else: the path works and nothing listens).
pub const PORT25_BLOCKED_HINT: &str = "port 25 connect timed out — if you run this from a home or office network, your ISP may block outbound port 25: run it from the VPS or another server";
