//! `cerectl vps list|remove|priority`: the VPSes this cerectl is enrolled with.

use std::process::ExitCode;

use ceres_control::{Credentials, VpsEntry};
use ceres_pki::Role;
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::cli::{Cli, ENROLL_HINT};

/// `vps` arguments.
#[derive(Debug, Args)]
pub struct VpsArgs {
    /// What to do.
    #[command(subcommand)]
    command: VpsCommand,
}

/// `vps` subcommands.
#[derive(Debug, Subcommand)]
enum VpsCommand {
    /// List the VPSes cerectl is enrolled with: name, priority, control
    /// address, CA, certificate expiry.
    List {
        /// Print JSON: `{"vpses": [{"name", "priority", "control_address",
        /// "ca_fingerprint", "certificate_not_after", "dir"}]}`.
        #[arg(long)]
        json: bool,
    },
    /// Forget a VPS here: its key and certificate are deleted (the
    /// certificate stays valid at the VPS until it expires or is revoked
    /// there with `ceres-vps cert revoke`).
    Remove {
        /// Its name (`cerectl vps list`).
        name: String,
    },
    /// Change a VPS's priority (its MX priority in `cerectl dns`; lower first).
    Priority {
        /// Its name (`cerectl vps list`).
        name: String,
        /// The new priority.
        #[arg(value_parser = clap::value_parser!(u16).range(1..))]
        priority: u16,
    },
}

/// One VPS in `vps list --json`.
#[derive(Debug, Serialize)]
struct Listed {
    name: String,
    priority: u16,
    control_address: String,
    ca_fingerprint: String,
    /// When this cerectl's certificate for it expires (it renews itself when
    /// used after two thirds of its life); null when it cannot be read.
    certificate_not_after: Option<String>,
    dir: String,
}

impl Listed {
    fn of(e: &VpsEntry) -> Self {
        let not_after = e
            .state_dir()
            .ok()
            .and_then(|d| Credentials::load(&d, Role::Admin, ENROLL_HINT).ok())
            .and_then(|c| c.info().ok())
            .map(|i| ceres_pki::rfc3339(ceres_pki::unix_secs(i.not_after)));
        Self {
            name: e.name.clone(),
            priority: e.priority,
            control_address: e.control_address.clone(),
            ca_fingerprint: e.ca_fingerprint.clone(),
            certificate_not_after: not_after,
            dir: e.dir.display().to_string(),
        }
    }
}

/// Runs `cerectl vps ...`.
pub(crate) async fn run(cli: &Cli, args: &VpsArgs) -> anyhow::Result<ExitCode> {
    let store = super::store(cli)?;
    match &args.command {
        VpsCommand::List { json } => {
            let all: Vec<Listed> = store.list()?.iter().map(Listed::of).collect();
            if *json {
                #[derive(Serialize)]
                struct Out {
                    vpses: Vec<Listed>,
                }
                println!("{}", serde_json::to_string_pretty(&Out { vpses: all })?);
            } else if all.is_empty() {
                println!(
                    "not enrolled with any VPS ({}): {ENROLL_HINT}",
                    store.root().path().display()
                );
            } else {
                print!("{}", render(&all));
            }
            Ok(ExitCode::SUCCESS)
        }
        VpsCommand::Remove { name } => {
            let e = store.remove(name).map_err(super::explain)?;
            println!(
                "removed VPS {} ({}) from {}",
                e.name,
                e.control_address,
                store.root().path().display()
            );
            println!(
                "Its admin certificate is still valid at that VPS until it expires; if this machine \
                 should lose access, revoke it there: `ceres-vps cert revoke NAME` (`ceres-vps cert list`)."
            );
            Ok(ExitCode::SUCCESS)
        }
        VpsCommand::Priority { name, priority } => {
            let e = store
                .set_priority(name, *priority)
                .map_err(super::explain)?;
            println!("VPS {} now has priority {}", e.name, e.priority);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn render(all: &[Listed]) -> String {
    let header = [
        "NAME",
        "PRIORITY",
        "CONTROL ADDRESS",
        "CERTIFICATE UNTIL",
        "CA",
    ]
    .map(String::from);
    let rows: Vec<[String; 5]> = all
        .iter()
        .map(|l| {
            [
                l.name.clone(),
                l.priority.to_string(),
                l.control_address.clone(),
                l.certificate_not_after
                    .clone()
                    .unwrap_or_else(|| "(unreadable)".into()),
                l.ca_fingerprint.clone(),
            ]
        })
        .collect();
    let mut widths = [0usize; 4];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        out.push_str(&format!(
            "{:w0$}  {:w1$}  {:w2$}  {:w3$}  {}\n",
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3]
        ));
    }
    out
}
