//! Command line of `cerectl`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use ceres_config::manual;
use ceres_control::Credentials;
use ceres_pki::Role;
use ceres_proto::StatusRequest;
use ceres_proto::admin_client::AdminClient;
use ceres_state::StateDir;
use clap::{Args, Parser, Subcommand};

use crate::status::Status;

/// Exit code when the status could not be fetched at all (not enrolled,
/// VPS unreachable) — distinct from 1, "fetched, and something is broken".
pub const EXIT_UNREACHABLE: u8 = 3;

pub(crate) const ENROLL_HINT: &str = "enrol first: on the VPS run `ceres-vps token create --role admin`, then `cerectl enroll TOKEN`";

/// Administer a CERES mail gateway from anywhere.
///
/// `cerectl enroll` once with an admin token from the VPS; then `cerectl
/// status` shows both agents, from any machine that can reach the VPS's
/// control port.
#[derive(Debug, Parser)]
#[command(name = "cerectl", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// Where the credentials live; default $XDG_CONFIG_HOME/ceres (~/.config/ceres).
    #[arg(long, global = true, value_name = "DIR", env = "CERECTL_DIR")]
    pub dir: Option<PathBuf>,
    /// Which enrolled VPS (`cerectl vps list`) a command is about; needed by
    /// one-VPS commands once there are several. With `enroll`: the new VPS's
    /// name (default the host in the token's address).
    #[arg(long, global = true, value_name = "NAME", env = "CERECTL_VPS")]
    pub vps: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

const AFTER_HELP: &str = "\
Getting started:
  on the VPS:  ceres-vps token create --role admin
  here:        cerectl enroll TOKEN
               cerectl status

Exit codes: 0 all good, 1 something is broken (listed), 2 usage error,
3 could not get the status (not enrolled, VPS unreachable), 78 configuration error.";

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Enrol this machine as an administrator of a VPS with a one-time admin
    /// token; another token adds another VPS.
    Enroll(crate::fleet::EnrollArgs),
    /// The VPSes this cerectl is enrolled with: list, remove, priority.
    Vps(crate::fleet::VpsArgs),
    /// Show the state of both agents; exit 1 when something is broken.
    Status(StatusArgs),
    /// Rotate the WireGuard keys and pre-shared key now (make-before-break:
    /// no connection through the tunnel is dropped). Waits for the result.
    Rotate(RotateArgs),
    /// Print the DNS and PTR records to set; `--check` verifies them live.
    Dns(crate::dns::DnsArgs),
    /// Everything `dns --check` does, plus blocklists, inbound and outbound
    /// port 25, PROXY per port and an open-relay probe; exit 1 on any failure.
    Doctor(crate::doctor::DoctorArgs),
    /// The mail software's configuration for the relayed ports (postfix,
    /// dovecot, nginx): print it, --apply it at home, or --check the live one;
    /// or a Keycloak realm's SMTP settings.
    MailserverConfig(crate::mailconfig::MailConfigArgs),
    /// Send a real test message through the VPS and show every SMTP step;
    /// exit 0 only when the server accepted it (250).
    SendTest(crate::sendtest::SendTestArgs),
    /// The VPS watchdog's notifications: `alerts test` sends one through
    /// each channel and shows what happened.
    Alerts(crate::alerts::AlertsArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(manual::CompletionsArgs),
    /// Print the man page, or with --out-dir write one page per subcommand.
    Man(manual::ManArgs),
}

/// `status` arguments.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON (schema in docs/status-json.md) instead of text.
    #[arg(long)]
    pub(crate) json: bool,
    /// Reach the VPS here instead of the address stored at enrolment.
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) address: Option<String>,
    /// Redraw every few seconds until interrupted (Ctrl-C).
    #[arg(long, conflicts_with = "json")]
    pub(crate) watch: bool,
    /// Seconds between redraws with --watch.
    #[arg(long, default_value_t = 2, value_name = "SECONDS", requires = "watch")]
    pub(crate) interval: u64,
    /// With several VPSes: seconds each may take to answer; one that does not
    /// is reported as such without holding up the others.
    #[arg(long, default_value_t = 5, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=300))]
    pub(crate) timeout: u64,
}

/// `rotate` arguments.
#[derive(Debug, Args)]
pub struct RotateArgs {
    /// Reach the VPS here instead of the address stored at enrolment.
    #[arg(long, value_name = "HOST:PORT")]
    address: Option<String>,
}

async fn rotate(cli: &Cli, args: &RotateArgs) -> Outcome {
    let dir = creds_dir(cli)?;
    let creds = admin_credentials(&dir, args.address.as_deref()).await?;
    let channel = creds
        .connect(args.address.as_deref())
        .await
        .map_err(|e| Unreachable(e.into()))?;
    let resp = AdminClient::new(channel)
        .rotate(ceres_proto::RotateRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("the VPS refused the rotation: {}", s.message()))?
        .into_inner();
    if resp.ok {
        println!(
            "rotation {} done: new WireGuard keys and pre-shared key at both ends",
            resp.rotation
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!("rotation {}: {}", resp.rotation, resp.message);
        Ok(ExitCode::FAILURE)
    }
}

/// The credentials of the VPS a one-VPS command is about (`--vps`, or the only one).
pub(crate) fn creds_dir(cli: &Cli) -> anyhow::Result<StateDir> {
    crate::fleet::selected_dir(cli)
}

/// The top credentials directory (`--dir`), holding every enrolled VPS.
pub(crate) fn root_dir(cli: &Cli) -> anyhow::Result<StateDir> {
    let path = match &cli.dir {
        Some(p) => p.clone(),
        None => {
            let base = std::env::var_os("XDG_CONFIG_HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
                .context("neither XDG_CONFIG_HOME nor HOME is set: pass --dir")?;
            base.join("ceres")
        }
    };
    Ok(StateDir::open(path)?)
}

/// Outcome of a command: an exit code (errors are printed by `main`).
type Outcome = anyhow::Result<ExitCode>;

/// An error that means "could not get the status at all".
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub(crate) struct Unreachable(pub(crate) anyhow::Error);

/// Parses the command line, runs it, and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    ceres_daemon::init_logging("warn");
    ceres_pki::tls::install_crypto_provider();
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(dispatch(&cli)));
    match result {
        Ok(code) => code,
        Err(e) if e.is::<Unreachable>() => {
            eprintln!("cerectl: {e:#}");
            ExitCode::from(EXIT_UNREACHABLE)
        }
        Err(e) if e.is::<crate::fleet::Usage>() => {
            eprintln!("cerectl: {e:#}");
            ExitCode::from(2)
        }
        Err(e) => ceres_daemon::exit_code("cerectl", Err(e)),
    }
}

async fn dispatch(cli: &Cli) -> Outcome {
    match &cli.command {
        Command::Enroll(args) => crate::fleet::enroll(cli, args).await,
        Command::Vps(args) => crate::fleet::vps(cli, args).await,
        Command::Status(args) => crate::fleet::status::run(cli, args).await,
        Command::Rotate(args) => rotate(cli, args).await,
        Command::Dns(args) => crate::dns::run(cli, args).await,
        Command::Doctor(args) => crate::doctor::run(cli, args).await,
        Command::MailserverConfig(args) => crate::mailconfig::run(cli, args).await,
        Command::SendTest(args) => crate::sendtest::run(cli, args).await,
        Command::Alerts(args) => crate::alerts::run(cli, args).await,
        Command::Completions(args) => {
            manual::completions::<Cli>(args);
            Ok(ExitCode::SUCCESS)
        }
        Command::Man(args) => {
            manual::man::<Cli>(args)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Loads the admin credentials, renewing the certificate first when it is
/// two thirds through its life (cerectl has no daemon to do it).
pub(crate) async fn admin_credentials(
    dir: &StateDir,
    address: Option<&str>,
) -> anyhow::Result<Credentials> {
    let creds =
        Credentials::load(dir, Role::Admin, ENROLL_HINT).map_err(|e| Unreachable(e.into()))?;
    if creds.renew_at()? <= std::time::SystemTime::now() {
        match creds.renew(address).await {
            Ok(fresh) => {
                fresh.save(dir, Role::Admin)?;
                return Ok(fresh);
            }
            Err(e) => eprintln!("cerectl: warning: could not renew the admin certificate: {e}"),
        }
    }
    Ok(creds)
}

pub(crate) async fn status(cli: &Cli, args: &StatusArgs) -> Outcome {
    let dir = creds_dir(cli)?;
    let creds = admin_credentials(&dir, args.address.as_deref()).await?;
    let channel = creds
        .connect(args.address.as_deref())
        .await
        .map_err(|e| Unreachable(e.into()))?;
    let mut client = AdminClient::new(channel);
    let fancy = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    loop {
        let status = match client.status(StatusRequest {}).await {
            Ok(resp) => Status::from_response(resp.into_inner()),
            Err(s) if args.watch => {
                // Keep watching through a VPS restart; say what is wrong meanwhile.
                println!(
                    "{}cerectl: the VPS did not answer: {}",
                    if fancy { "\x1b[H\x1b[2J" } else { "" },
                    s.message()
                );
                tokio::time::sleep(std::time::Duration::from_secs(args.interval.max(1))).await;
                continue;
            }
            Err(s) => {
                return Err(Unreachable(anyhow::anyhow!(
                    "the VPS refused the status request: {}",
                    s.message()
                ))
                .into());
            }
        };
        if args.json {
            println!("{}", serde_json::to_string_pretty(&status)?);
        } else {
            if args.watch && fancy {
                // Home the cursor and clear: a steady screen, not a scroll.
                print!("\x1b[H\x1b[2J");
            }
            print!("{}", status.render(fancy));
        }
        if !args.watch {
            return Ok(if status.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
        tokio::time::sleep(std::time::Duration::from_secs(args.interval.max(1))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_completions_and_man_page_are_complete() {
        manual::check_generated::<Cli>(&[
            "enroll",
            "vps",
            "status",
            "rotate",
            "dns",
            "doctor",
            "mailserver-config",
            "send-test",
            "alerts",
            "completions",
            "man",
        ])
        .unwrap_or_else(|missing| panic!("{missing}"));
    }
}
