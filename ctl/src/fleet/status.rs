//! `cerectl status` with several VPSes: each VPS's own status (the one-VPS
//! report, unchanged), fetched concurrently with a time limit per VPS, and a
//! summary: through how many VPSes inbound mail reaches home, and through
//! which one outbound mail leaves.
//!
//! With one VPS (or `--vps NAME`) this is not used: `status` prints exactly
//! what it always did.

use std::io::{IsTerminal, Write as _};
use std::process::ExitCode;
use std::time::Duration;

use ceres_control::{Selection, VpsEntry};
use ceres_proto::StatusRequest;
use ceres_proto::admin_client::AdminClient;
use serde::Serialize;

use super::Usage;
use crate::cli::{Cli, EXIT_UNREACHABLE, StatusArgs, admin_credentials};
use crate::status::{SCHEMA, Status, escape_controls};

/// Runs `cerectl status`: the one-VPS status when there is one VPS (or one
/// was named), otherwise every VPS and the summary.
pub(crate) async fn run(cli: &Cli, args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let store = super::store(cli)?;
    let all = match store.select(cli.vps.as_deref()).map_err(super::explain)? {
        Selection::Several(all) => all,
        Selection::Nothing | Selection::One(_) => return crate::cli::status(cli, args).await,
    };
    if args.address.is_some() {
        return Err(Usage(
            "--address reaches one VPS: name it with --vps NAME (`cerectl vps list`)".into(),
        )
        .into());
    }
    let limit = Duration::from_secs(args.timeout);
    let fancy = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    loop {
        let report = fetch(&all, limit).await;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            if args.watch && fancy {
                // Home the cursor and clear: a steady screen, not a scroll.
                print!("\x1b[H\x1b[2J");
            }
            print!("{}", report.render(fancy));
        }
        if !args.watch {
            return Ok(report.exit_code());
        }
        let _ = std::io::stdout().flush();
        tokio::time::sleep(Duration::from_secs(args.interval.max(1))).await;
    }
}

/// Every VPS's status at once: each within `limit`, so a dead one costs its
/// own time limit and no more.
pub(crate) async fn fetch(all: &[VpsEntry], limit: Duration) -> FleetStatus {
    let vpses = futures::future::join_all(
        all.iter()
            .map(|e| async move { VpsReport::new(e, fetch_one(e, limit).await) }),
    )
    .await;
    FleetStatus::new(vpses)
}

/// How fetching one VPS's status went.
enum Fetched {
    Answered(Box<Status>),
    Failed { error: String, timed_out: bool },
}

async fn fetch_one(e: &VpsEntry, limit: Duration) -> Fetched {
    let ask = async {
        let dir = e.state_dir()?;
        let creds = admin_credentials(&dir, None).await?;
        let channel = creds.connect(None).await?;
        let resp = AdminClient::new(channel)
            .status(StatusRequest {})
            .await
            .map_err(|s| anyhow::anyhow!("the VPS refused the status request: {}", s.message()))?;
        Ok::<_, anyhow::Error>(Status::from_response(resp.into_inner()))
    };
    match tokio::time::timeout(limit, ask).await {
        Ok(Ok(status)) => Fetched::Answered(Box::new(status)),
        Ok(Err(error)) => Fetched::Failed {
            error: format!("{error:#}"),
            timed_out: false,
        },
        Err(_) => Fetched::Failed {
            error: format!(
                "no answer from {} within {} s (--timeout)",
                e.control_address,
                limit.as_secs()
            ),
            timed_out: true,
        },
    }
}

/// One VPS in the status of several.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct VpsReport {
    /// Its name in `cerectl vps list`.
    pub name: String,
    /// Its priority (lower first).
    pub priority: u16,
    /// Where cerectl reached it (or tried).
    pub control_address: String,
    /// Whether its status came.
    pub answered: bool,
    /// It did not answer within the time limit (a subset of not answered).
    pub timed_out: bool,
    /// Why its status did not come.
    pub error: Option<String>,
    /// It answered and nothing in its status is broken.
    pub ok: bool,
    /// Inbound mail reaches home through it: home's session to it is up and
    /// its tunnel has a fresh handshake.
    pub inbound: bool,
    /// Outbound mail can leave through it: its tunnel has a fresh handshake
    /// and egress is installed at both ends without error.
    pub outbound: bool,
    /// Its own status, exactly the one-VPS document; null when it did not answer.
    pub status: Option<Status>,
}

impl VpsReport {
    fn new(e: &VpsEntry, fetched: Fetched) -> Self {
        let mut r = Self {
            name: e.name.clone(),
            priority: e.priority,
            control_address: e.control_address.clone(),
            answered: false,
            timed_out: false,
            error: None,
            ok: false,
            inbound: false,
            outbound: false,
            status: None,
        };
        match fetched {
            Fetched::Answered(s) => {
                r.answered = true;
                r.ok = s.ok;
                r.inbound = inbound(&s);
                r.outbound = outbound(&s);
                r.status = Some(*s);
            }
            Fetched::Failed { error, timed_out } => {
                r.error = Some(error);
                r.timed_out = timed_out;
            }
        }
        r
    }

    /// One word for the summary table.
    fn verdict(&self) -> String {
        match (&self.status, self.timed_out) {
            (Some(s), _) if s.ok => "ok".into(),
            (Some(s), _) => format!("PROBLEMS ({})", s.problems.len()),
            (None, true) => "NO ANSWER".into(),
            (None, false) => "UNREACHABLE".into(),
        }
    }
}

/// What the home says of this VPS as its outbound uplink, if it says.
fn uplink_of(v: &VpsReport) -> Option<crate::status::EgressUplink> {
    v.status
        .as_ref()
        .and_then(|s| s.egress.home.as_ref())
        .and_then(|h| h.uplink)
}

/// Inbound through this VPS: home is connected to it and the tunnel is up.
fn inbound(s: &Status) -> bool {
    s.home.connected && s.tunnel.up
}

/// Outbound through this VPS: a fresh tunnel and egress at both ends.
fn outbound(s: &Status) -> bool {
    let vps = &s.egress.vps;
    s.tunnel.up
        && vps.enabled
        && vps.error.is_none()
        && s.egress
            .home
            .as_ref()
            .is_some_and(|h| h.enabled && h.error.is_none())
}

/// The summary of several VPSes.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Summary {
    /// How many VPSes are enrolled.
    pub vpses: usize,
    /// How many answered.
    pub answered: usize,
    /// The VPSes inbound mail reaches home through, by priority.
    pub inbound_through: Vec<String>,
    /// The VPS outbound mail leaves through: the first by priority of
    /// `outbound_ready`; null when none is.
    pub outbound_through: Option<String>,
    /// Every VPS outbound mail could leave through, by priority.
    pub outbound_ready: Vec<String>,
    /// The summary as one sentence (what the text output ends with).
    pub line: String,
}

/// `cerectl status --json` with several VPSes (docs/status-json.md).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FleetStatus {
    /// The same schema number as the one-VPS document.
    pub schema: u32,
    /// Every VPS answered and none has a problem; the exit code is 0 exactly then.
    pub ok: bool,
    /// Inbound and outbound across the VPSes.
    pub summary: Summary,
    /// Each VPS, by priority.
    pub vpses: Vec<VpsReport>,
}

impl FleetStatus {
    fn new(mut vpses: Vec<VpsReport>) -> Self {
        vpses.sort_by(|a, b| (a.priority, &a.name).cmp(&(b.priority, &b.name)));
        let names = |f: fn(&VpsReport) -> bool| -> Vec<String> {
            vpses
                .iter()
                .filter(|v| f(v))
                .map(|v| v.name.clone())
                .collect()
        };
        let inbound_through = names(|v| v.inbound);
        let outbound_ready = names(|v| v.outbound);
        // The home's own choice when it reports one (several VPSes, a
        // current home agent); otherwise the first ready by priority.
        let chosen =
            names(|v| v.outbound && uplink_of(v) == Some(crate::status::EgressUplink::Active));
        let outbound_through = chosen.first().or(outbound_ready.first()).cloned();
        let mut line = format!(
            "inbound reachable through {} of {} VPSes",
            inbound_through.len(),
            vpses.len()
        );
        if !inbound_through.is_empty() {
            line.push_str(&format!(" ({})", inbound_through.join(", ")));
        }
        let others: Vec<&str> = outbound_ready
            .iter()
            .filter(|n| Some(*n) != outbound_through.as_ref())
            .map(String::as_str)
            .collect();
        let why = if chosen.is_empty() {
            "first by priority"
        } else {
            "home's choice"
        };
        match (&outbound_through, others.as_slice()) {
            (None, _) => line.push_str(
                "; outbound through none (no VPS has a fresh tunnel with egress at both ends)",
            ),
            (Some(one), []) => line.push_str(&format!("; outbound through {one}")),
            (Some(first), rest) => line.push_str(&format!(
                "; outbound through {first} ({why}; also ready: {})",
                rest.join(", ")
            )),
        }
        let summary = Summary {
            vpses: vpses.len(),
            answered: vpses.iter().filter(|v| v.answered).count(),
            inbound_through,
            outbound_through,
            outbound_ready,
            line,
        };
        Self {
            schema: SCHEMA,
            ok: vpses.iter().all(|v| v.ok),
            summary,
            vpses,
        }
    }

    /// 0 when every VPS answered and is ok, 3 when none answered, 1 otherwise.
    pub(crate) fn exit_code(&self) -> ExitCode {
        if self.ok {
            ExitCode::SUCCESS
        } else if self.summary.answered == 0 {
            ExitCode::from(EXIT_UNREACHABLE)
        } else {
            ExitCode::FAILURE
        }
    }

    /// Each VPS's status under its own heading, then one line per VPS and the summary.
    pub(crate) fn render(&self, fancy: bool) -> String {
        let mut out = String::new();
        for v in &self.vpses {
            let title = format!(
                "VPS {} (priority {}, {})",
                escape_controls(&v.name),
                v.priority,
                escape_controls(&v.control_address)
            );
            out.push_str(&heading(&title, fancy));
            match (&v.status, &v.error) {
                (Some(s), _) => out.push_str(&s.render(fancy)),
                (None, error) => {
                    let word = if v.timed_out {
                        "NO ANSWER"
                    } else {
                        "UNREACHABLE"
                    };
                    out.push_str(&format!(
                        "{}: {}\n",
                        paint(word, "31", fancy),
                        escape_controls(error.as_deref().unwrap_or("no status"))
                    ));
                }
            }
            out.push('\n');
        }
        out.push_str(&heading("All VPSes", fancy));
        let width = self
            .vpses
            .iter()
            .map(|v| escape_controls(&v.name).chars().count())
            .max()
            .unwrap_or(0);
        let verdicts: Vec<String> = self.vpses.iter().map(VpsReport::verdict).collect();
        let vwidth = verdicts.iter().map(String::len).max().unwrap_or(0);
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        for (v, verdict) in self.vpses.iter().zip(&verdicts) {
            let colour = if v.ok { "32" } else { "31" };
            out.push_str(&format!(
                "  {:width$}  priority {:<5}  {}  inbound {:<3}  outbound {}\n",
                escape_controls(&v.name),
                v.priority,
                paint(&format!("{verdict:vwidth$}"), colour, fancy),
                yes_no(v.inbound),
                yes_no(v.outbound),
            ));
        }
        out.push_str(&escape_controls(&self.summary.line));
        out.push('\n');
        out
    }
}

fn heading(title: &str, fancy: bool) -> String {
    if fancy {
        format!("\x1b[1m── {title} ──\x1b[0m\n")
    } else {
        format!("=== {title} ===\n")
    }
}

fn paint(text: &str, code: &str, fancy: bool) -> String {
    if fancy {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests;
