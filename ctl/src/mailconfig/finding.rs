//! What `--check` found: typed findings (kind, subject, why, fix), rendered to
//! text or JSON. Tools decide on `kind` and `subject`, never on the sentences.

use serde::Serialize;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// The live configuration lets someone forge a client address, relay, or
    /// send mail around the VPS.
    Unsafe,
    /// Something CERES relays has nowhere to land, or outbound mail does not
    /// leave through the tunnel.
    Missing,
}

/// One unsafe or missing setting, with its fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Unsafe or missing.
    pub kind: FindingKind,
    /// The setting or listener, as the software names it
    /// (`main.cf postscreen_upstream_proxy_protocol`, `127.0.0.1:10025/inet`).
    pub subject: String,
    /// What goes wrong because of it.
    pub why: String,
    /// What to do (usually: run `--apply`, or the exact command).
    pub fix: String,
}

impl Finding {
    /// An unsafe setting.
    pub fn unsafe_(
        subject: impl Into<String>,
        why: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            kind: FindingKind::Unsafe,
            subject: subject.into(),
            why: why.into(),
            fix: fix.into(),
        }
    }

    /// A missing setting.
    pub fn missing(
        subject: impl Into<String>,
        why: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            kind: FindingKind::Missing,
            subject: subject.into(),
            why: why.into(),
            fix: fix.into(),
        }
    }
}

/// Prints the findings of `target` (text or JSON).
pub fn report(target: &str, findings: &[Finding], json: bool) {
    if json {
        let v = serde_json::json!({ "target": target, "ok": findings.is_empty(), "findings": findings });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return;
    }
    print!("{}", render(target, findings));
}

/// The text form.
pub fn render(target: &str, findings: &[Finding]) -> String {
    if findings.is_empty() {
        return format!("{target}: OK — nothing unsafe or missing for CERES\n");
    }
    let mut o = format!("{target}: {} finding(s)\n", findings.len());
    for f in findings {
        let kind = match f.kind {
            FindingKind::Unsafe => "UNSAFE ",
            FindingKind::Missing => "MISSING",
        };
        o.push_str(&format!(
            "{kind} {}\n        {}\n        fix: {}\n",
            f.subject, f.why, f.fix
        ));
    }
    o
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn text_and_json() {
        let f = vec![Finding::unsafe_("main.cf x", "bad", "postconf -X x")];
        let t = render("postfix", &f);
        assert!(
            t.starts_with("postfix: 1 finding(s)\nUNSAFE  main.cf x\n"),
            "{t}"
        );
        assert!(t.contains("fix: postconf -X x"));
        assert_eq!(
            render("nginx", &[]),
            "nginx: OK — nothing unsafe or missing for CERES\n"
        );
        let v = serde_json::to_value(&f).unwrap();
        assert_eq!(v[0]["kind"], "unsafe");
        assert_eq!(v[0]["subject"], "main.cf x");
    }
}
