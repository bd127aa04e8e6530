//! `cerectl enroll TOKEN [--vps NAME] [--priority N]`: adds a VPS.
//!
//! Everything that can refuse is checked before the one-time token is spent:
//! the token's role, the name, and whether this VPS (its CA) is already there.

use std::io::Read;
use std::process::ExitCode;

use anyhow::Context;
use ceres_control::store::{default_name, names};
use ceres_control::{Credentials, StoreError};
use ceres_pki::{JoinToken, Role};
use clap::Args;

use crate::cli::Cli;

/// `enroll` arguments. The VPS's name is the global `--vps NAME` (default
/// the host in the token's control address, e.g. `203.0.113.10`).
#[derive(Debug, Args)]
pub struct EnrollArgs {
    /// The token; `-` reads it from standard input.
    token: String,
    /// Replace the credentials of the VPS of the same name (--vps), or of
    /// this same VPS (same CA) — e.g. after it moved to a new address.
    #[arg(long)]
    force: bool,
    /// Name for the certificate; default "cerectl@HOSTNAME" (`ceres-vps
    /// cert list` shows it, `cert revoke` takes it).
    #[arg(long)]
    name: Option<String>,
    /// Priority of this VPS among several: its MX priority in `cerectl dns`,
    /// lower first; default after the others (10, 20, 30, ...).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    priority: Option<u16>,
}

/// Runs `cerectl enroll`.
pub(crate) async fn run(cli: &Cli, args: &EnrollArgs) -> anyhow::Result<ExitCode> {
    let store = super::store(cli)?;
    let text = if args.token == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the token from stdin")?;
        s
    } else {
        args.token.clone()
    };
    let token = JoinToken::decode(&text)?;
    Credentials::check_role(&token, Role::Admin, "cerectl")?;
    let fingerprint = token.ca_fingerprint.to_string();
    // `--force` without a name renews the VPS with this CA under its name.
    let same_vps = store
        .list()?
        .into_iter()
        .find(|e| e.ca_fingerprint == fingerprint);
    let name = match (&cli.vps, &same_vps) {
        (Some(n), _) => n.clone(),
        (None, Some(e)) if args.force => e.name.clone(),
        (None, _) => default_name(&token.control_address),
    };
    let replaces = store
        .check_new(&name, &fingerprint, args.force)
        .map_err(|e| refusal(e, &name))?;
    let priority = match (args.priority, &replaces) {
        (Some(p), _) => p,
        (None, Some(old)) => old.priority,
        (None, None) => store.next_priority()?,
    };
    let cert_name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("cerectl@{}", host()));
    let creds = Credentials::enroll(
        &token,
        Role::Admin,
        "cerectl",
        &cert_name,
        env!("CARGO_PKG_VERSION"),
    )
    .await?;
    let entry = store.add(&name, priority, &creds, replaces.as_ref())?;
    println!(
        "enrolled as administrator of the VPS at {}",
        creds.control_address
    );
    println!(
        "  VPS          {} (priority {})",
        entry.name, entry.priority
    );
    println!("  CA           {}", token.ca_fingerprint);
    println!("  stored in    {}", entry.dir.display());
    let all = store.list()?;
    if all.len() > 1 {
        println!(
            "cerectl is enrolled with {} VPSes: {}.",
            all.len(),
            names(&all)
        );
        println!(
            "Next: `cerectl status` shows them all, `cerectl dns` the records for all; \
             --vps NAME picks one."
        );
    } else {
        println!("Next: `cerectl status`.");
    }
    Ok(ExitCode::SUCCESS)
}

/// Why this enrolment is refused, and the flag that gets the user further.
fn refusal(e: StoreError, name: &str) -> anyhow::Error {
    let hint = match &e {
        StoreError::DuplicateName { .. } => format!(
            "give this VPS another name with --vps NAME, or pass --force to replace {name}'s credentials \
             (the token was not used)"
        ),
        StoreError::SameVps { name: old, .. } => format!(
            "pass --force to renew its credentials under the name {old}, or `cerectl vps remove {old}` \
             first to enrol it as {name} (the token was not used)"
        ),
        StoreError::BadName { .. } => "name it with --vps NAME (the token was not used)".into(),
        _ => return e.into(),
    };
    anyhow::anyhow!("{e}: {hint}")
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "host".into())
}
