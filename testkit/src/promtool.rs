//! `promtool check metrics` on an agent's Prometheus page: the format's
//! own checker (from Debian's `prometheus` package), so a page that only
//! looks right to our tests is still caught.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// promtool's path. `None` (the caller skips) when it is not installed —
/// except under `CI=true`, where a skip would hide a missing package: then
/// it panics.
pub fn binary() -> Option<PathBuf> {
    let found = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "promtool is not installed (apt-get install -y prometheus) and CI=true: refusing to skip"
        );
        eprintln!("SKIP promtool check: promtool is not installed (apt-get install -y prometheus)");
    }
    found
}

/// Pipes `page` through `promtool check metrics` and panics with what it
/// says when it rejects the page (a parse error or a lint problem). Returns
/// whether the page was checked: `false` when promtool is not installed
/// (see [`binary`]).
pub fn check_metrics(page: &str) -> bool {
    let Some(promtool) = binary() else {
        return false;
    };
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", promtool.display()));
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(page.as_bytes())
            .unwrap_or_else(|e| panic!("cannot feed promtool: {e}"));
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("promtool did not finish: {e}"));
    assert!(
        out.status.success(),
        "promtool check metrics rejects the page ({}):\n{}{}\n--- page ---\n{page}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_page_passes() {
        check_metrics("# HELP x_total things\n# TYPE x_total counter\nx_total{port=\"25\"} 3\n");
    }

    #[test]
    fn an_openmetrics_style_counter_is_rejected() {
        if binary().is_none() {
            return;
        }
        let page = "# HELP x things.\n# TYPE x counter\nx_total 3\n# EOF\n";
        let caught = std::panic::catch_unwind(|| check_metrics(page));
        assert!(caught.is_err(), "promtool accepted {page:?}");
    }
}
