//! Notifications: what a message says, and the channels that carry it (a
//! webhook, e-mail to each recipient). Each channel has its own queue and
//! worker, so messages on a channel keep their order (a "resolved" never
//! overtakes its "failing"), a slow channel holds up no other, and a failed
//! send is retried a few times before it is given up (and logged).

mod email;
mod http;
mod webhook;

use ceres_sync::Unpoison;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ceres_proto::{AlertChannel, AlertChannelKind, AlertResult};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::settings::{MailAddress, WatchSettings, WebhookSettings};
use super::state::{Event, EventKind};
use email::Mailer;
pub use webhook::{WebhookFormat, WebhookUrl};

/// Waits before each retry of a failed send (after the first try).
const RETRY_AFTER: [Duration; 3] = [
    Duration::from_secs(10),
    Duration::from_secs(60),
    Duration::from_secs(300),
];
/// Bounds one webhook POST.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(15);
/// Bounds one whole mail delivery (every MX host).
const MAIL_TIMEOUT: Duration = Duration::from_secs(120);
/// Messages waiting per channel; more are dropped (and counted as failed):
/// the budget makes that rare, and memory stays bounded when a channel is dead.
const QUEUE: usize = 64;

/// Who sends: the VPS, named in every message.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The mail host (what people know the gateway by).
    pub mail_host: String,
    /// The mail domain.
    pub domain: String,
    /// The VPS's public addresses.
    pub public_ips: Vec<IpAddr>,
}

/// One notification, rendered once for every channel.
#[derive(Debug, Clone)]
pub struct Message {
    /// Why it is sent.
    pub kind: EventKind,
    /// One line: `[mail.example.com] FAILING: DNS blocklists`.
    pub title: String,
    /// The text (body of mail, ntfy and Gotify).
    pub text: String,
    /// When, unix seconds.
    pub at_unix: i64,
    /// The generic JSON body.
    json: serde_json::Value,
}

impl Message {
    /// Renders `event` as sent by `origin`. Every string from elsewhere
    /// (findings quote DNS answers and home's reports) is shown without
    /// control characters: it cannot forge lines or headers.
    pub fn new(event: &Event, origin: &Origin) -> Self {
        let obs = &event.observation;
        let (what, check) = match event.check {
            Some(c) => (c.title().to_owned(), c.as_str()),
            None => ("a test of this alert channel".to_owned(), "test"),
        };
        let title = format!("[{}] {}: {what}", origin.mail_host, event.kind.label());
        let when = |unix: i64| ceres_pki::rfc3339(unix);
        let mut text = String::new();
        match event.kind {
            EventKind::Failing | EventKind::Reminder => {
                text.push_str(&format!(
                    "{what} is failing since {} ({} ago).\n\n{}\n",
                    when(event.failing_since_unix),
                    super::local::age(event.at_unix - event.failing_since_unix),
                    one_line(&obs.detail)
                ));
            }
            EventKind::Resolved => {
                text.push_str(&format!(
                    "{what} is no longer failing: it failed from {} to {} ({}).\nNow {}: {}\n",
                    when(event.failing_since_unix),
                    when(event.since_unix),
                    super::local::age(event.since_unix - event.failing_since_unix),
                    obs.level.as_str(),
                    one_line(&obs.detail)
                ));
            }
            EventKind::Test => {
                text.push_str(
                    "This is a test notification (`cerectl alerts test`): this channel works.\n",
                );
            }
        }
        if !obs.findings.is_empty() && event.kind != EventKind::Resolved {
            text.push('\n');
            for f in &obs.findings {
                let subject = if f.subject.is_empty() {
                    String::new()
                } else {
                    format!("{}: ", one_line(&f.subject))
                };
                text.push_str(&format!(
                    "- {} {subject}{}\n",
                    f.level.as_str(),
                    one_line(&f.text)
                ));
            }
        }
        if let Some(until) = event.budget_exhausted_until_unix {
            text.push_str(&format!(
                "\nThis is the last \"failing\" this check may send within the hour: a further \
                 failure is told no sooner than {} (CERES_ALERT_MAX_PER_HOUR).\n",
                when(until)
            ));
        }
        let ips = origin
            .public_ips
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>();
        text.push_str(&format!(
            "\n-- \nThe CERES agent on the VPS {} ({}), watching the mail gateway of {}.\n",
            origin.mail_host,
            ips.join(", "),
            origin.domain
        ));
        let json = json!({
            "source": "ceres-vps",
            "event": event.kind.as_str(),
            "check": check,
            "title": title,
            "state": obs.level.as_str(),
            "since": when(event.since_unix),
            "since_unix": event.since_unix,
            "failing_since_unix": event.failing_since_unix,
            "at_unix": event.at_unix,
            "detail": one_line(&obs.detail),
            "findings": obs.findings.iter().map(|f| json!({
                "subject": one_line(&f.subject),
                "state": f.level.as_str(),
                "text": one_line(&f.text),
            })).collect::<Vec<_>>(),
            "mail_host": origin.mail_host,
            "domain": origin.domain,
            "vps_addresses": ips,
            "message": text,
        });
        Self {
            kind: event.kind,
            title,
            text,
            at_unix: event.at_unix,
            json,
        }
    }

    /// The generic JSON body.
    pub fn json(&self) -> &serde_json::Value {
        &self.json
    }
}

/// `s` with every control character (newlines too) replaced by a space.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `s` as a header value: printable ASCII on one line.
pub fn ascii_line(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// Where a channel sends.
#[derive(Debug, Clone)]
enum Target {
    Webhook(WebhookSettings),
    Email(MailAddress),
}

/// How a channel has done.
#[derive(Debug, Clone, Default)]
struct Stats {
    sent: u64,
    failed: u64,
    last_attempt_unix: i64,
    last_error: String,
}

#[derive(Debug)]
struct Channel {
    target: Target,
    stats: Mutex<Stats>,
    queue: mpsc::Sender<Message>,
}

impl Channel {
    fn to_proto(&self) -> AlertChannel {
        let s = self.stats.locked().clone();
        let (kind, target, format) = match &self.target {
            Target::Webhook(w) => (
                AlertChannelKind::Webhook,
                w.url.to_string(),
                w.format.as_str().to_owned(),
            ),
            Target::Email(a) => (AlertChannelKind::Email, a.to_string(), String::new()),
        };
        AlertChannel {
            kind: kind as i32,
            target,
            format,
            sent: s.sent,
            failed: s.failed,
            last_attempt_unix: s.last_attempt_unix,
            last_error: s.last_error,
        }
    }

    fn record(&self, result: &Result<String, Failure>) {
        let mut s = self.stats.locked();
        s.last_attempt_unix = ceres_pki::unix_secs(std::time::SystemTime::now());
        match result {
            Ok(_) => {
                s.sent += 1;
                s.last_error.clear();
            }
            Err(e) => {
                s.failed += 1;
                s.last_error = e.text.clone();
            }
        }
    }

    /// One try on this channel: what the receiver said, or why it failed.
    async fn send(&self, msg: &Message, mailer: &Mailer) -> Result<String, Failure> {
        match &self.target {
            Target::Webhook(w) => {
                let body = webhook::body(w.format, msg);
                http::post(&w.url, &body, w.ca_file.as_deref(), WEBHOOK_TIMEOUT)
                    .await
                    .map(|status| format!("{} answered {status}", w.url))
                    .map_err(|e| Failure {
                        permanent: e.is_permanent(),
                        text: format!("{}: {e}", w.url),
                    })
            }
            Target::Email(to) => tokio::time::timeout(MAIL_TIMEOUT, mailer.deliver(to, msg))
                .await
                .map_err(|_| Failure {
                    permanent: false,
                    text: format!("{to}: not delivered within {} s", MAIL_TIMEOUT.as_secs()),
                })?
                .map(|r| format!("{to}: {r}"))
                .map_err(|e| Failure {
                    permanent: matches!(e, email::MailError::Rejected { .. }),
                    text: format!("{to}: {e}"),
                }),
        }
    }
}

/// A send that failed.
#[derive(Debug, Clone)]
struct Failure {
    /// What went wrong.
    text: String,
    /// The receiver refused for good (a 5xx to the mail, a 4xx to the
    /// request): trying again would get the same answer.
    permanent: bool,
}

/// The channels and their workers.
#[derive(Debug)]
pub struct Notifier {
    channels: Vec<Arc<Channel>>,
    origin: Origin,
    mailer: Arc<Mailer>,
}

impl Notifier {
    /// The channels of `settings`, each with a worker owned by `tracker`.
    pub fn start(
        settings: &WatchSettings,
        origin: Origin,
        cancel: &CancellationToken,
        tracker: &TaskTracker,
    ) -> Self {
        let mailer = Arc::new(Mailer {
            from: settings.from.clone(),
            helo: origin.mail_host.clone(),
            sources: origin.public_ips.clone(),
            resolver: settings.resolver,
        });
        let targets = settings
            .webhook
            .iter()
            .cloned()
            .map(Target::Webhook)
            .chain(settings.emails.iter().cloned().map(Target::Email));
        let mut channels = Vec::new();
        for target in targets {
            if let Target::Email(to) = &target
                && to.domain() == origin.domain
            {
                tracing::warn!(to = %to, "alert mail to your own domain goes to your own mail server: it cannot arrive while home is down; add an address elsewhere");
            }
            let (tx, rx) = mpsc::channel(QUEUE);
            let channel = Arc::new(Channel {
                target,
                stats: Mutex::default(),
                queue: tx,
            });
            tracker.spawn(work(
                channel.clone(),
                rx,
                mailer.clone(),
                cancel.child_token(),
            ));
            channels.push(channel);
        }
        Self {
            channels,
            origin,
            mailer,
        }
    }

    /// Queues `event` on every channel (never waits).
    pub fn send(&self, event: &Event) {
        let msg = Message::new(event, &self.origin);
        for c in &self.channels {
            if let Err(e) = c.queue.try_send(msg.clone()) {
                let why = format!("not sent: the channel's queue is full or closed ({e})");
                tracing::error!(channel = ?c.to_proto().target, "{why}");
                c.record(&Err(Failure {
                    text: why,
                    permanent: true,
                }));
            }
        }
    }

    /// Sends a test notification on every channel at once, now (not queued),
    /// and says what happened on each.
    pub async fn test(&self, event: &Event) -> Vec<AlertResult> {
        let msg = Message::new(event, &self.origin);
        let sends = self.channels.iter().map(|c| {
            let msg = &msg;
            async move {
                let result = c.send(msg, &self.mailer).await;
                c.record(&result);
                tracing::info!(channel = %c.to_proto().target, ok = result.is_ok(), "test notification");
                let (ok, detail) = match result {
                    Ok(d) => (true, d),
                    Err(f) => (false, f.text),
                };
                AlertResult {
                    channel: Some(c.to_proto()),
                    ok,
                    detail,
                }
            }
        });
        futures::future::join_all(sends).await
    }

    /// The channels as status shows them.
    pub fn channels(&self) -> Vec<AlertChannel> {
        self.channels.iter().map(|c| c.to_proto()).collect()
    }
}

/// A channel's worker: sends queued messages in order, each with retries.
async fn work(
    channel: Arc<Channel>,
    mut rx: mpsc::Receiver<Message>,
    mailer: Arc<Mailer>,
    cancel: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => return,
            m = rx.recv() => match m { Some(m) => m, None => return },
        };
        let mut waits = RETRY_AFTER.iter();
        loop {
            let result = tokio::select! {
                _ = cancel.cancelled() => return,
                r = channel.send(&msg, &mailer) => r,
            };
            channel.record(&result);
            match result {
                Ok(detail) => {
                    tracing::info!(title = %msg.title, %detail, "notification sent");
                    break;
                }
                Err(e) => match waits.next().filter(|_| !e.permanent) {
                    Some(wait) => {
                        tracing::warn!(title = %msg.title, error = %e.text, retry_in_s = wait.as_secs(), "notification not sent; will retry");
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = tokio::time::sleep(*wait) => {}
                        }
                    }
                    None => {
                        tracing::error!(title = %msg.title, error = %e.text, permanent = e.permanent, "notification not sent; giving up on it");
                        break;
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::check::{CheckId, Finding, Level, Observation};
    use webhook::{WebhookFormat, body};

    fn origin() -> Origin {
        Origin {
            mail_host: "mail.example.com".into(),
            domain: "example.com".into(),
            public_ips: vec!["203.0.113.10".parse().unwrap()],
        }
    }

    fn event(kind: EventKind, level: Level) -> Event {
        Event {
            check: Some(CheckId::Dnsbl),
            kind,
            observation: Observation::from_findings(
                "clean",
                vec![Finding::new(
                    "203.0.113.10 on bl.example",
                    level,
                    "listed (127.0.0.2): spam\ntrap\u{1b}[31m",
                )],
            ),
            since_unix: 1_700_000_600,
            failing_since_unix: 1_700_000_000,
            at_unix: 1_700_000_600,
            budget_exhausted_until_unix: None,
        }
    }

    #[test]
    fn messages_say_what_since_when_and_from_which_vps() {
        let m = Message::new(&event(EventKind::Failing, Level::Failing), &origin());
        assert_eq!(m.title, "[mail.example.com] FAILING: DNS blocklists");
        assert!(
            m.text.starts_with(
                "DNS blocklists is failing since 2023-11-14T22:13:20Z (10 min ago).\n"
            ),
            "{}",
            m.text
        );
        // Control characters from a finding cannot forge lines or colours.
        assert!(
            m.text.contains(
                "- failing 203.0.113.10 on bl.example: listed (127.0.0.2): spam trap [31m\n"
            ),
            "{}",
            m.text
        );
        assert!(
            m.text
                .contains("The CERES agent on the VPS mail.example.com (203.0.113.10)")
        );
        assert_eq!(m.json()["event"], "failing");
        assert_eq!(m.json()["check"], "dnsbl");
        assert_eq!(m.json()["findings"][0]["state"], "failing");

        let r = Message::new(&event(EventKind::Resolved, Level::Warning), &origin());
        assert!(
            r.text
                .contains("it failed from 2023-11-14T22:13:20Z to 2023-11-14T22:23:20Z (10 min)"),
            "{}",
            r.text
        );
        let mut last = event(EventKind::Failing, Level::Failing);
        last.budget_exhausted_until_unix = Some(1_700_003_600);
        let l = Message::new(&last, &origin());
        assert!(
            l.text.contains("no sooner than 2023-11-14T23:13:20Z"),
            "{}",
            l.text
        );
    }

    #[test]
    fn ntfy_and_gotify_bodies() {
        let m = Message::new(&event(EventKind::Failing, Level::Failing), &origin());
        let n = body(WebhookFormat::Ntfy, &m);
        assert_eq!(n.content_type, "text/plain; charset=utf-8");
        assert_eq!(
            n.headers,
            vec![
                (
                    "Title",
                    "[mail.example.com] FAILING: DNS blocklists".to_owned()
                ),
                ("Priority", "5".to_owned()),
                ("Tags", "rotating_light".to_owned()),
            ]
        );
        assert_eq!(n.bytes, m.text.as_bytes());
        let g = body(WebhookFormat::Gotify, &m);
        let v: serde_json::Value = serde_json::from_slice(&g.bytes).unwrap();
        assert_eq!(v["priority"], 8);
        assert_eq!(v["title"], m.title);
        let r = Message::new(&event(EventKind::Resolved, Level::Ok), &origin());
        assert_eq!(body(WebhookFormat::Ntfy, &r).headers[1].1, "3");
        let j = body(WebhookFormat::Json, &r);
        let v: serde_json::Value = serde_json::from_slice(&j.bytes).unwrap();
        assert_eq!(v["event"], "resolved");
    }
}
