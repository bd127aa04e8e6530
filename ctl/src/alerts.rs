//! `cerectl alerts test`: the VPS sends one test notification through each
//! alert channel it has (CERES_ALERT_WEBHOOK, CERES_ALERT_EMAIL) and says
//! what each receiver answered.

use std::process::ExitCode;

use ceres_proto::admin_client::AdminClient;
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::cli::{Cli, Unreachable, admin_credentials, creds_dir};
use crate::status_checks::AlertChannelPart;

/// `alerts` arguments.
#[derive(Debug, Args)]
pub struct AlertsArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: AlertsCommand,
}

/// `alerts` subcommands.
#[derive(Debug, Subcommand)]
pub enum AlertsCommand {
    /// Have the VPS send one test notification through each channel now and
    /// print what happened on each; exit 1 when one failed or none is set up.
    Test {
        /// Print JSON: `{"ok": bool, "results": [{"channel", "ok", "detail"}]}`.
        #[arg(long)]
        json: bool,
        /// Reach the VPS here instead of the address stored at enrolment.
        #[arg(long, value_name = "HOST:PORT")]
        address: Option<String>,
    },
}

/// One channel's outcome.
#[derive(Debug, Serialize)]
struct ResultPart {
    channel: Option<AlertChannelPart>,
    ok: bool,
    detail: String,
}

/// Runs `cerectl alerts`.
pub async fn run(cli: &Cli, args: &AlertsArgs) -> anyhow::Result<ExitCode> {
    let AlertsCommand::Test { json, address } = &args.command;
    let dir = creds_dir(cli)?;
    let creds = admin_credentials(&dir, address.as_deref()).await?;
    let channel = creds
        .connect(address.as_deref())
        .await
        .map_err(|e| Unreachable(e.into()))?;
    let resp = AdminClient::new(channel)
        .test_alerts(ceres_proto::TestAlertsRequest {})
        .await
        .map_err(|s| match s.code() {
            tonic::Code::Unimplemented => anyhow::anyhow!(
                "the VPS agent has no alerts (it is older than this cerectl): update ceres-vps"
            ),
            _ => anyhow::anyhow!("the VPS refused the test: {}", s.message()),
        })?
        .into_inner();
    let results: Vec<ResultPart> = resp
        .results
        .iter()
        .map(|r| ResultPart {
            channel: r.channel.as_ref().map(crate::status_checks::channel),
            ok: r.ok,
            detail: r.detail.clone(),
        })
        .collect();
    let ok = !results.is_empty() && results.iter().all(|r| r.ok);
    if *json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "ok": ok, "results": results }))?
        );
    } else if results.is_empty() {
        println!(
            "no alert channel is configured on the VPS: set CERES_ALERT_WEBHOOK and/or \
             CERES_ALERT_EMAIL in its ceres.env and restart ceres-vps"
        );
    } else {
        for r in &results {
            let what = r
                .channel
                .as_ref()
                .map(|c| {
                    format!(
                        "{} {}{}",
                        c.kind,
                        c.target,
                        c.format
                            .as_deref()
                            .map(|f| format!(" ({f})"))
                            .unwrap_or_default()
                    )
                })
                .unwrap_or_else(|| "?".into());
            println!(
                "{} {what}: {}",
                if r.ok { "SENT  " } else { "FAILED" },
                crate::status::escape_controls(&r.detail)
            );
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
