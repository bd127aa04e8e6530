//! The watchdog's and the alerts' keys (`CERES_WATCH_*`, `CERES_ALERT_*`),
//! validated once into [`WatchSettings`].

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use ceres_config::{ConfigError, HumanDuration, Layers, Switch};
use clap::Args;

use super::dns::Resolver;
use super::notify::{WebhookFormat, WebhookUrl};
use super::state::Policy;

/// The flags (each also a `CERES_*` key) of the watchdog and its alerts.
#[derive(Debug, Clone, Default, Args)]
pub struct WatchFlags {
    /// How often the checks of live state run: home and tunnel, relays,
    /// egress, home firewall, key rotation. Default 15s. [CERES_WATCH_INTERVAL]
    #[arg(long, value_name = "DURATION")]
    pub watch_interval: Option<String>,
    /// on: the VPS checks its DNS itself (MX, SPF, PTR, blocklists); off: not
    /// (no DNS queries at all). Default on. [CERES_WATCH_DNS]
    #[arg(long, value_name = "on|off")]
    pub watch_dns: Option<String>,
    /// How often MX, SPF and PTR are checked; default 15m. [CERES_WATCH_DNS_INTERVAL]
    #[arg(long, value_name = "DURATION")]
    pub watch_dns_interval: Option<String>,
    /// How often the blocklists are asked; default 1h (public lists limit
    /// queries). [CERES_WATCH_DNSBL_INTERVAL]
    #[arg(long, value_name = "DURATION")]
    pub watch_dnsbl_interval: Option<String>,
    /// Blocklist zones, comma-separated, or none; default
    /// zen.spamhaus.org, bl.spamcop.net, b.barracudacentral.org,
    /// psbl.surriel.com, bl.mailspike.net. [CERES_WATCH_DNSBL_ZONES]
    #[arg(long, value_name = "ZONE[,ZONE]|none")]
    pub watch_dnsbl_zones: Option<String>,
    /// The DNS server the checks and the alert mail's MX look-ups ask:
    /// system (/etc/resolv.conf) or IP[:PORT]. Blocklists refuse big public
    /// resolvers: a resolver of your own is best. Default system.
    /// [CERES_WATCH_RESOLVER]
    #[arg(long, value_name = "system|IP[:PORT]")]
    pub watch_resolver: Option<String>,
    /// Where to POST notifications: http(s)://HOST[:PORT]/PATH (user:password@
    /// for basic auth). Unset: no webhook. [CERES_ALERT_WEBHOOK]
    #[arg(long, value_name = "URL")]
    pub alert_webhook: Option<String>,
    /// The webhook's body: json (generic), ntfy (the topic URL) or gotify
    /// (URL .../message?token=APPTOKEN). Default json. [CERES_ALERT_WEBHOOK_FORMAT]
    #[arg(long, value_name = "json|ntfy|gotify")]
    pub alert_webhook_format: Option<String>,
    /// CA certificates (PEM) an https webhook's certificate must chain to;
    /// default the system's. [CERES_ALERT_WEBHOOK_CA]
    #[arg(long, value_name = "FILE")]
    pub alert_webhook_ca: Option<String>,
    /// Mail notifications to these addresses, comma-separated; the VPS
    /// delivers them itself to each domain's MX, so an address outside your
    /// own domain reaches you while home is down. [CERES_ALERT_EMAIL]
    #[arg(long, value_name = "ADDR[,ADDR]")]
    pub alert_email: Option<String>,
    /// The sender of alert mail; default ceres-alerts@DOMAIN (your SPF
    /// authorises the VPS address, so it passes SPF). [CERES_ALERT_FROM]
    #[arg(long, value_name = "ADDR")]
    pub alert_from: Option<String>,
    /// A live check must fail this long before "failing" is sent, and be
    /// fixed this long before "resolved" is sent. Default 2m. [CERES_ALERT_DELAY]
    #[arg(long, value_name = "DURATION")]
    pub alert_delay: Option<String>,
    /// Remind this often while a check stays failing; off for never.
    /// Default 24h. [CERES_ALERT_REMIND]
    #[arg(long, value_name = "DURATION|off")]
    pub alert_remind: Option<String>,
    /// At most this many "failing" notifications per check per hour (more
    /// wait, and are dropped if the check recovers meanwhile). Default 3.
    /// [CERES_ALERT_MAX_PER_HOUR]
    #[arg(long, value_name = "N")]
    pub alert_max_per_hour: Option<String>,
}

/// The webhook channel.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Where to.
    pub url: WebhookUrl,
    /// Body format.
    pub format: WebhookFormat,
    /// CA file for https (`None`: the system's).
    pub ca_file: Option<PathBuf>,
}

/// The resolved watchdog settings.
#[derive(Debug, Clone)]
pub struct WatchSettings {
    /// Interval of the live checks.
    pub interval: Duration,
    /// Whether the DNS checks run.
    pub dns: bool,
    /// Interval of MX, SPF, PTR.
    pub dns_interval: Duration,
    /// Interval of the blocklist look-ups.
    pub dnsbl_interval: Duration,
    /// Blocklist zones (empty: none).
    pub dnsbl_zones: Vec<String>,
    /// The resolver.
    pub resolver: Resolver,
    /// The webhook, if any.
    pub webhook: Option<WebhookSettings>,
    /// Mail recipients.
    pub emails: Vec<MailAddress>,
    /// Sender of alert mail.
    pub from: MailAddress,
    /// When to notify.
    pub policy: Policy,
}

/// A mail address, checked: `local@domain`, the local part in the plain
/// ASCII form (no quotes, spaces or brackets: nothing that could break out
/// of an SMTP command or a header), the domain a DNS name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailAddress {
    local: String,
    domain: String,
}

impl MailAddress {
    /// The domain, lower case.
    pub fn domain(&self) -> &str {
        &self.domain
    }
}

impl fmt::Display for MailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

impl FromStr for MailAddress {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let bad = || format!("{s:?} is not a mail address (expected e.g. ops@example.net)");
        let (local, domain) = s.rsplit_once('@').ok_or_else(bad)?;
        let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c);
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..")
            && local.chars().all(|c| atext(c) || c == '.');
        if !local_ok {
            return Err(bad());
        }
        let crate::settings::DnsName(domain) = domain
            .parse()
            .map_err(|e: String| format!("{s:?}: the domain {e}"))?;
        Ok(Self {
            local: local.to_owned(),
            domain,
        })
    }
}

/// Comma-separated mail addresses.
#[derive(Debug, Clone)]
struct MailList(Vec<MailAddress>);

impl FromStr for MailList {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let list: Result<Vec<MailAddress>, String> = s
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(str::parse)
            .collect();
        let mut list = list?;
        list.dedup();
        Ok(MailList(list))
    }
}

/// `system` or a server address.
impl FromStr for Resolver {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("system") {
            return Ok(Resolver::System);
        }
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(Resolver::Server(a));
        }
        s.parse::<std::net::IpAddr>()
            .map(|ip| Resolver::Server(SocketAddr::new(ip, 53)))
            .map_err(|_| {
                "expected system, IP or IP:PORT (e.g. 192.0.2.53, [2001:db8::53]:5353)".into()
            })
    }
}

/// Comma-separated blocklist zones, or `none`.
#[derive(Debug, Clone)]
struct Zones(Vec<String>);

impl FromStr for Zones {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().eq_ignore_ascii_case("none") || s.trim().is_empty() {
            return Ok(Zones(Vec::new()));
        }
        s.split(',')
            .map(|z| {
                z.parse::<crate::settings::DnsName>()
                    .map(|d| d.0)
                    .map_err(|e| format!("blocklist zone {:?}: {e}", z.trim()))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Zones)
    }
}

/// A duration of at least a second.
#[derive(Debug, Clone, Copy)]
struct Interval(Duration);

impl FromStr for Interval {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let HumanDuration(d) = s.parse()?;
        if d < Duration::from_secs(1) {
            return Err("must be at least 1s".into());
        }
        Ok(Interval(d))
    }
}

/// A duration, or `off`.
#[derive(Debug, Clone, Copy)]
struct OptionalInterval(Option<Duration>);

impl FromStr for OptionalInterval {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().eq_ignore_ascii_case("off") {
            return Ok(OptionalInterval(None));
        }
        s.parse::<Interval>()
            .map(|i| OptionalInterval(Some(i.0)))
            .map_err(|e| format!("{e}; or off"))
    }
}

/// A count of at least one.
#[derive(Debug, Clone, Copy)]
struct AtLeastOne(u32);

impl FromStr for AtLeastOne {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().parse::<u32>() {
            Ok(n) if n >= 1 => Ok(AtLeastOne(n)),
            _ => Err("expected a whole number of at least 1".into()),
        }
    }
}

impl WatchFlags {
    /// Resolves the settings; `domain` is the mail domain (the default sender's).
    pub fn resolve(&self, layers: &Layers, domain: &str) -> Result<WatchSettings, ConfigError> {
        let default_zones = ceres_dnscheck::DEFAULT_DNSBL_ZONES.join(",");
        let webhook = match layers
            .get::<WebhookUrl>("CERES_ALERT_WEBHOOK", self.alert_webhook.as_deref())?
        {
            Some(url) => Some(WebhookSettings {
                url,
                format: layers.get_or(
                    "CERES_ALERT_WEBHOOK_FORMAT",
                    self.alert_webhook_format.as_deref(),
                    "json",
                )?,
                ca_file: layers.get("CERES_ALERT_WEBHOOK_CA", self.alert_webhook_ca.as_deref())?,
            }),
            None => None,
        };
        if webhook.is_none() {
            // A format or CA without a webhook is a mistake worth naming.
            for (key, flag) in [
                (
                    "CERES_ALERT_WEBHOOK_FORMAT",
                    self.alert_webhook_format.as_deref(),
                ),
                ("CERES_ALERT_WEBHOOK_CA", self.alert_webhook_ca.as_deref()),
            ] {
                if let Some((value, origin)) = layers.raw(key, flag) {
                    return Err(ConfigError::Invalid {
                        key: key.into(),
                        value,
                        origin,
                        message: "CERES_ALERT_WEBHOOK is not set: set it too, or remove this key"
                            .into(),
                    });
                }
            }
        }
        let from =
            match layers.get::<MailAddress>("CERES_ALERT_FROM", self.alert_from.as_deref())? {
                Some(a) => a,
                None => format!("ceres-alerts@{domain}")
                    .parse()
                    .map_err(|e: String| ConfigError::Invalid {
                        key: "CERES_DOMAIN".into(),
                        value: domain.into(),
                        origin: ceres_config::Origin::Env,
                        message: e,
                    })?,
            };
        Ok(WatchSettings {
            interval: layers
                .get_or::<Interval>(
                    "CERES_WATCH_INTERVAL",
                    self.watch_interval.as_deref(),
                    "15s",
                )?
                .0,
            dns: layers
                .get_or::<Switch>("CERES_WATCH_DNS", self.watch_dns.as_deref(), "on")?
                .0,
            dns_interval: layers
                .get_or::<Interval>(
                    "CERES_WATCH_DNS_INTERVAL",
                    self.watch_dns_interval.as_deref(),
                    "15m",
                )?
                .0,
            dnsbl_interval: layers
                .get_or::<Interval>(
                    "CERES_WATCH_DNSBL_INTERVAL",
                    self.watch_dnsbl_interval.as_deref(),
                    "1h",
                )?
                .0,
            dnsbl_zones: layers
                .get_or::<Zones>(
                    "CERES_WATCH_DNSBL_ZONES",
                    self.watch_dnsbl_zones.as_deref(),
                    &default_zones,
                )?
                .0,
            resolver: layers.get_or(
                "CERES_WATCH_RESOLVER",
                self.watch_resolver.as_deref(),
                "system",
            )?,
            webhook,
            emails: layers
                .get::<MailList>("CERES_ALERT_EMAIL", self.alert_email.as_deref())?
                .map(|l| l.0)
                .unwrap_or_default(),
            from,
            policy: Policy {
                delay: layers
                    .get_or::<HumanDuration>(
                        "CERES_ALERT_DELAY",
                        self.alert_delay.as_deref(),
                        "2m",
                    )?
                    .0,
                remind: layers
                    .get_or::<OptionalInterval>(
                        "CERES_ALERT_REMIND",
                        self.alert_remind.as_deref(),
                        "24h",
                    )?
                    .0,
                max_per_hour: layers
                    .get_or::<AtLeastOne>(
                        "CERES_ALERT_MAX_PER_HOUR",
                        self.alert_max_per_hour.as_deref(),
                        "3",
                    )?
                    .0,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn resolve(pairs: &[(&str, &str)]) -> Result<WatchSettings, ConfigError> {
        let env: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        WatchFlags::default().resolve(&Layers::from_parts(None, env), "example.com")
    }

    #[test]
    fn defaults() {
        let s = resolve(&[]).unwrap();
        assert_eq!(s.interval, Duration::from_secs(15));
        assert!(s.dns);
        assert_eq!(s.dnsbl_zones.len(), 5);
        assert_eq!(s.resolver, Resolver::System);
        assert!(s.webhook.is_none() && s.emails.is_empty());
        assert_eq!(s.from.to_string(), "ceres-alerts@example.com");
        assert_eq!(
            s.policy,
            Policy {
                delay: Duration::from_secs(120),
                remind: Some(Duration::from_secs(86_400)),
                max_per_hour: 3
            }
        );
    }

    #[test]
    fn values_parse() {
        let s = resolve(&[
            (
                "CERES_ALERT_WEBHOOK",
                "https://ntfy.example.net/ceres-topic",
            ),
            ("CERES_ALERT_WEBHOOK_FORMAT", "ntfy"),
            ("CERES_ALERT_EMAIL", "ops@example.net, Boss@Example.ORG"),
            ("CERES_ALERT_REMIND", "off"),
            ("CERES_WATCH_RESOLVER", "192.0.2.53:5353"),
            ("CERES_WATCH_DNSBL_ZONES", "none"),
        ])
        .unwrap();
        assert_eq!(s.webhook.unwrap().format, WebhookFormat::Ntfy);
        assert_eq!(
            s.emails.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["ops@example.net", "Boss@example.org"]
        );
        assert_eq!(s.policy.remind, None);
        assert_eq!(
            s.resolver,
            Resolver::Server("192.0.2.53:5353".parse().unwrap())
        );
        assert!(s.dnsbl_zones.is_empty());
    }

    #[test]
    fn bad_values_name_the_key_and_the_fix() {
        let e = |pairs: &[(&str, &str)]| resolve(pairs).unwrap_err().to_string();
        let m = e(&[("CERES_ALERT_WEBHOOK", "ftp://x.example/")]);
        assert!(
            m.contains("CERES_ALERT_WEBHOOK") && m.contains("http://"),
            "{m}"
        );
        let m = e(&[
            ("CERES_ALERT_WEBHOOK", "http://192.0.2.10:8080/hook"),
            ("CERES_ALERT_WEBHOOK_FORMAT", "slack"),
        ]);
        assert!(m.contains("json, ntfy or gotify"), "{m}");
        let m = e(&[("CERES_ALERT_WEBHOOK_FORMAT", "ntfy")]);
        assert!(m.contains("CERES_ALERT_WEBHOOK is not set"), "{m}");
        let m = e(&[("CERES_ALERT_EMAIL", "ops@example.net,not an address")]);
        assert!(
            m.contains("CERES_ALERT_EMAIL") && m.contains("ops@example.net"),
            "{m}"
        );
        let m = e(&[("CERES_ALERT_EMAIL", "a<b>@example.net")]);
        assert!(m.contains("not a mail address"), "{m}");
        let m = e(&[("CERES_ALERT_MAX_PER_HOUR", "0")]);
        assert!(m.contains("at least 1"), "{m}");
        let m = e(&[("CERES_WATCH_INTERVAL", "0s")]);
        assert!(m.contains("at least 1s"), "{m}");
        let m = e(&[("CERES_WATCH_RESOLVER", "dns.example")]);
        assert!(m.contains("expected system, IP or IP:PORT"), "{m}");
        let m = e(&[("CERES_WATCH_DNSBL_ZONES", "zen.spamhaus.org,nodot")]);
        assert!(m.contains("\"nodot\""), "{m}");
    }
}
