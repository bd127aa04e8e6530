//! The webhook channel: its URL (checked once, shown without the parts that
//! may hold a secret), and the three bodies — generic JSON, ntfy, Gotify.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use base64::Engine;
use serde_json::json;

use super::Message;

/// A webhook URL: `http(s)://[user:password@]HOST[:PORT][/PATH][?QUERY]`.
///
/// Path and query are often the secret (an ntfy topic, a Gotify token), and
/// so is the password: [`Display`](fmt::Display) and `Debug` show scheme,
/// host and port only.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    /// https.
    pub tls: bool,
    /// Host name or IP address (without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
    /// `user:password` for basic auth.
    userinfo: Option<String>,
}

impl WebhookUrl {
    /// The `Authorization` header value for basic auth, if the URL has a user.
    pub fn basic_auth(&self) -> Option<String> {
        self.userinfo.as_ref().map(|u| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(u.as_bytes())
            )
        })
    }

    /// The `Host` header value.
    pub fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default = if self.tls { 443 } else { 80 };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        let rest = if self.path == "/" { "/" } else { "/…" };
        write!(f, "{scheme}://{}{rest}", self.host_header())
    }
}

impl fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WebhookUrl({self})")
    }
}

impl FromStr for WebhookUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        const FORM: &str = "expected http://HOST[:PORT]/PATH or https://HOST[:PORT]/PATH";
        let s = s.trim();
        if s.chars().any(|c| c.is_control() || c == ' ') {
            return Err(format!(
                "{FORM}: the URL contains spaces or control characters"
            ));
        }
        let lower = s.to_ascii_lowercase();
        let (tls, rest) = if lower.starts_with("https://") {
            (true, &s[8..])
        } else if lower.starts_with("http://") {
            (false, &s[7..])
        } else {
            return Err(FORM.into());
        };
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        let path = match path {
            "" => "/".to_owned(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_owned(),
        };
        if let Some(hash) = path.find('#') {
            return Err(format!(
                "{FORM}: a #fragment (at {hash}) is never sent to the server; remove it"
            ));
        }
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) if !u.is_empty() => (Some(u.to_owned()), h),
            Some(_) => return Err(format!("{FORM}: empty user before @")),
            None => (None, authority),
        };
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{FORM}: unclosed [ in the host"))?;
            let port = match after {
                "" => default_port,
                p => p
                    .strip_prefix(':')
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| format!("{FORM}: bad port {p:?}"))?,
            };
            (h.to_owned(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_owned(),
                    p.parse().map_err(|_| format!("{FORM}: bad port {p:?}"))?,
                ),
                None => (hostport.to_owned(), default_port),
            }
        };
        let host_ok = host.parse::<IpAddr>().is_ok()
            || (!host.is_empty()
                && host.len() <= 253
                && host.split('.').all(|l| {
                    !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                }));
        if !host_ok || port == 0 {
            return Err(format!("{FORM}: {host:?} is not a host name or address"));
        }
        Ok(Self {
            tls,
            host: host.to_ascii_lowercase(),
            port,
            path,
            userinfo,
        })
    }
}

/// The body a webhook gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookFormat {
    /// Our own JSON object (schema in docs/operations.md).
    Json,
    /// ntfy: the text as body, title, priority and tags as headers
    /// (https://docs.ntfy.sh/publish/).
    Ntfy,
    /// Gotify: JSON with title, message and priority, POSTed to
    /// `/message?token=...` (https://gotify.net/docs/pushmsg).
    Gotify,
}

impl WebhookFormat {
    /// The name in `CERES_ALERT_WEBHOOK_FORMAT`.
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookFormat::Json => "json",
            WebhookFormat::Ntfy => "ntfy",
            WebhookFormat::Gotify => "gotify",
        }
    }
}

impl FromStr for WebhookFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "json" => Ok(Self::Json),
            "ntfy" => Ok(Self::Ntfy),
            "gotify" => Ok(Self::Gotify),
            _ => Err("expected json, ntfy or gotify".into()),
        }
    }
}

/// A request to send: content type, extra headers, body.
#[derive(Debug, Clone)]
pub struct Body {
    /// `Content-Type`.
    pub content_type: &'static str,
    /// More headers (ntfy's title, priority, tags).
    pub headers: Vec<(&'static str, String)>,
    /// The bytes.
    pub bytes: Vec<u8>,
}

/// The body of `msg` in `format`.
pub fn body(format: WebhookFormat, msg: &Message) -> Body {
    match format {
        WebhookFormat::Json => Body {
            content_type: "application/json",
            headers: Vec::new(),
            bytes: msg.json().to_string().into_bytes(),
        },
        WebhookFormat::Ntfy => {
            // Header values must stay on one line and in ASCII.
            let (priority, tags) = match msg.kind.as_str() {
                "failing" => ("5", "rotating_light"),
                "reminder" => ("4", "warning"),
                "resolved" => ("3", "white_check_mark"),
                _ => ("2", "bell"),
            };
            Body {
                content_type: "text/plain; charset=utf-8",
                headers: vec![
                    ("Title", super::ascii_line(&msg.title)),
                    ("Priority", priority.to_owned()),
                    ("Tags", tags.to_owned()),
                ],
                bytes: msg.text.clone().into_bytes(),
            }
        }
        WebhookFormat::Gotify => {
            let priority = match msg.kind.as_str() {
                "failing" => 8,
                "reminder" => 6,
                "resolved" => 4,
                _ => 2,
            };
            Body {
                content_type: "application/json",
                headers: Vec::new(),
                bytes: json!({
                    "title": msg.title,
                    "message": msg.text,
                    "priority": priority,
                })
                .to_string()
                .into_bytes(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_never_show_their_secrets() {
        let u: WebhookUrl = "https://alice:s3cret@ntfy.example.net/ceres-topic-xyz"
            .parse()
            .unwrap();
        assert!(u.tls);
        assert_eq!((u.host.as_str(), u.port), ("ntfy.example.net", 443));
        assert_eq!(u.path, "/ceres-topic-xyz");
        assert_eq!(u.basic_auth().unwrap(), "Basic YWxpY2U6czNjcmV0");
        for shown in [u.to_string(), format!("{u:?}")] {
            assert!(
                !shown.contains("s3cret") && !shown.contains("xyz"),
                "{shown}"
            );
        }
        assert_eq!(u.to_string(), "https://ntfy.example.net/…");

        let g: WebhookUrl = "HTTP://[2001:db8::5]:8080?token=abc".parse().unwrap();
        assert_eq!(
            (g.host.as_str(), g.port, g.tls),
            ("2001:db8::5", 8080, false)
        );
        assert_eq!(g.path, "/?token=abc");
        assert_eq!(g.host_header(), "[2001:db8::5]:8080");
        let plain: WebhookUrl = "http://192.0.2.10:8080/hook".parse().unwrap();
        assert_eq!(plain.host_header(), "192.0.2.10:8080");
        assert_eq!(plain.to_string(), "http://192.0.2.10:8080/…");

        for bad in [
            "ftp://x.example/",
            "http://",
            "http://x.example:0/",
            "http://x.example:99999/",
            "http://x y.example/",
            "http://x.example/a#frag",
            "http://bad_host.example/",
            "http://[2001:db8::5/",
            "http://@x.example/",
        ] {
            assert!(bad.parse::<WebhookUrl>().is_err(), "{bad}");
        }
    }
}
