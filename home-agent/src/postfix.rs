//! Postfix on the home host: its version, and whether it can read the PROXY
//! v2 headers the relays send to its SMTP ports (Postfix reads v2 only from
//! 3.5 on; older ones need `/proxy-v1`).

use std::process::Command;

use ceres_proto::{PostfixReport, ProxyV2Relay};
use ceres_relay::{ProxyMode, RelaySpec, spec::proxy_home_port};

/// The first Postfix that reads PROXY protocol version 2
/// (`smtpd_upstream_proxy_protocol = haproxy` with v2 headers).
pub const PROXY_V2_SINCE: PostfixVersion = PostfixVersion { major: 3, minor: 5 };

/// The ports Postfix serves SMTP on: relays to these (or to their PROXY
/// ports, 10025/10465/10587) reach Postfix.
const SMTP_PORTS: [u16; 3] = [25, 465, 587];

/// A Postfix release, by the two numbers that decide features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PostfixVersion {
    /// `3` in 3.4.14.
    pub major: u32,
    /// `4` in 3.4.14 (numeric: 3.10 is newer than 3.5).
    pub minor: u32,
}

impl PostfixVersion {
    /// Parses `mail_version` ("3.4.14", "3.10.1", "3.8-20221006"); `None`
    /// when it does not start with `MAJOR.MINOR`.
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.trim().splitn(3, '.');
        let major = parts.next()?.parse().ok()?;
        let minor: String = parts
            .next()?
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        Some(Self {
            major,
            minor: minor.parse().ok()?,
        })
    }

    /// Whether this Postfix reads PROXY v2 headers.
    pub fn reads_proxy_v2(self) -> bool {
        self >= PROXY_V2_SINCE
    }
}

/// Whether `spec` relays to Postfix: an SMTP port on either side, or the
/// PROXY port of one.
fn reaches_postfix(spec: &RelaySpec) -> bool {
    SMTP_PORTS.contains(&spec.public_port)
        || SMTP_PORTS.contains(&spec.home_port)
        || SMTP_PORTS
            .iter()
            .any(|p| proxy_home_port(*p) == Some(spec.home_port))
}

/// What the report says about Postfix, given `mail_version` (`None` when
/// `postconf` could not be run: no report) and the relays forwarded now.
pub fn check(version: Option<&str>, specs: &[RelaySpec]) -> Option<PostfixReport> {
    let version = version?.trim();
    let too_old = PostfixVersion::parse(version).is_some_and(|v| !v.reads_proxy_v2());
    let proxy_v2_unsupported = if too_old {
        specs
            .iter()
            .filter(|s| s.proxy == ProxyMode::V2 && reaches_postfix(s))
            .map(|s| ProxyV2Relay {
                public_port: s.public_port.into(),
                home_port: s.home_port.into(),
            })
            .collect()
    } else {
        Vec::new()
    };
    Some(PostfixReport {
        version: version.to_owned(),
        proxy_v2_unsupported,
    })
}

/// Runs `postconf -h mail_version` (blocking: call it off the async
/// workers). `None` when there is no Postfix here to ask.
pub fn installed_version() -> Option<String> {
    let out = Command::new("postconf")
        .args(["-h", "mail_version"])
        .output()
        .map_err(|e| tracing::debug!(error = %e, "no postconf here: Postfix not checked"))
        .ok()?;
    if !out.status.success() {
        tracing::debug!(status = %out.status, "postconf -h mail_version failed");
        return None;
    }
    let v = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (!v.is_empty()).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Option<PostfixVersion> {
        PostfixVersion::parse(s)
    }

    #[test]
    fn versions_parse_and_compare_numerically() {
        assert_eq!(v("3.4.14"), Some(PostfixVersion { major: 3, minor: 4 }));
        assert_eq!(
            v("3.10.1"),
            Some(PostfixVersion {
                major: 3,
                minor: 10
            })
        );
        assert_eq!(
            v("3.8-20221006"),
            Some(PostfixVersion { major: 3, minor: 8 })
        );
        assert!(!v("3.4.14").unwrap().reads_proxy_v2());
        assert!(!v("2.11.3").unwrap().reads_proxy_v2());
        for ok in ["3.5.0", "3.7.11", "3.10.1", "4.0"] {
            assert!(v(ok).unwrap().reads_proxy_v2(), "{ok}");
        }
        for garbage in ["", "postfix", "3", "three.five", ".5", "3."] {
            assert_eq!(v(garbage), None, "{garbage:?}");
        }
    }

    #[test]
    fn an_old_postfix_behind_a_proxy_v2_smtp_relay_is_reported() {
        let specs = ceres_relay::parse_relays(
            "25/proxy-v2,587/proxy-v1,993/proxy-v2,2525:10465/proxy-v2,465",
        )
        .unwrap();
        let r = check(Some("3.4.14\n"), &specs).unwrap();
        assert_eq!(r.version, "3.4.14");
        let ports: Vec<_> = r
            .proxy_v2_unsupported
            .iter()
            .map(|p| (p.public_port, p.home_port))
            .collect();
        assert_eq!(ports, [(25, 10025), (2525, 10465)]);
        for fine in ["3.5.0", "3.7.11", "3.10.1", "garbage"] {
            let r = check(Some(fine), &specs).unwrap();
            assert!(r.proxy_v2_unsupported.is_empty(), "{fine}");
            assert_eq!(r.version, fine);
        }
        assert_eq!(check(None, &specs), None);
    }
}
