//! Command line of `ceres-home`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use ceres_config::{ConfigError, DEFAULT_STATE_DIR, Layers, manual};
use ceres_control::{CredError, Credentials};
use ceres_pki::{JoinToken, Role};
use ceres_state::StateDir;
use clap::{Args, Parser, Subcommand};

use crate::session::VERSION;
use crate::settings::{HomeFlags, HomeSettings, hostname};

/// The CERES agent next to your home mail server.
///
/// Joins the VPS once with a token, then keeps a session to it, so the VPS
/// relays your mail ports here and sends your outbound mail from its address.
/// It dials out (works behind NAT and CGNAT) and reconnects by itself.
///
/// Every setting is a flag and a key in the config file: --name is
/// CERES_NAME, and so on. Flags win over the environment, which wins over
/// the file.
#[derive(Debug, Parser)]
#[command(name = "ceres-home", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// Config file (KEY=value lines, also usable as systemd EnvironmentFile=).
    #[arg(long, global = true, value_name = "FILE", default_value = ceres_config::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// State directory: keys and certificates (0700). [CERES_STATE_DIR]
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

const AFTER_HELP: &str = "\
Getting started:
  on the VPS:   ceres-vps token create --role home
  here:         ceres-home join TOKEN
                ceres-home run        # or: systemctl enable --now ceres-home

Exit codes: 0 ok, 1 failure, 2 usage error, 78 configuration error.";

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Enrol with the VPS using a one-time token from `ceres-vps token create --role home`.
    Join(JoinArgs),
    /// Run the agent (until SIGINT or SIGTERM).
    Run(Box<RunArgs>),
    /// What this host knows without the VPS: agent, session, tunnel,
    /// forwarders, egress, firewall. Exit 0 ok, 1 something broken, 3 cannot tell.
    Status(StatusArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(manual::CompletionsArgs),
    /// Print the man page, or with --out-dir write one page per subcommand.
    Man(manual::ManArgs),
}

/// `join` arguments.
#[derive(Debug, Args)]
pub struct JoinArgs {
    /// The token; `-` reads it from standard input (keeps it out of shell history).
    token: String,
    /// Replace existing credentials (joining a re-initialised VPS).
    #[arg(long)]
    force: bool,
    /// Name of this host in the certificate and in status; default the hostname.
    #[arg(long)]
    name: Option<String>,
}

/// `status` arguments.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Machine-readable output (schema in docs/status-json.md).
    #[arg(long)]
    json: bool,
}

/// `run` arguments.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    flags: HomeFlags,
}

/// Every key `ceres-home` accepts in the config file or environment.
pub fn known_keys() -> Vec<String> {
    let mut keys = ceres_config::keys_of(&RunArgs::augment_args(clap::Command::new("run")), &[]);
    keys.push("CERES_STATE_DIR".into());
    keys
}

fn layers(cli: &Cli, missing_ok: bool) -> Result<Layers, ConfigError> {
    let missing_ok = missing_ok || cli.config == Path::new(ceres_config::DEFAULT_CONFIG);
    let layers = Layers::load_path(&cli.config, missing_ok)?;
    layers.check_keys(&known_keys())?;
    Ok(layers)
}

fn state_dir(cli: &Cli, layers: &Layers) -> Result<StateDir, anyhow::Error> {
    let path: PathBuf = layers.get_or(
        "CERES_STATE_DIR",
        cli.state_dir.as_deref(),
        DEFAULT_STATE_DIR,
    )?;
    Ok(StateDir::open(path)?)
}

/// Parses the command line, runs it, and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Status(args) = &cli.command {
        return status(&cli, args);
    }
    ceres_daemon::init_logging("info");
    ceres_pki::tls::install_crypto_provider();
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(dispatch(&cli)));
    ceres_daemon::exit_code("ceres-home", result)
}

async fn dispatch(cli: &Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Join(args) => join(cli, args).await,
        Command::Run(args) => run(cli, &args.flags).await,
        // Answered in `main`: it has its own exit codes and logs nothing.
        Command::Status(_) => Ok(()),
        Command::Completions(args) => {
            manual::completions::<Cli>(args);
            Ok(())
        }
        Command::Man(args) => Ok(manual::man::<Cli>(args)?),
    }
}

/// `status`: the settings say where the state and the tunnel's socket are;
/// a configuration that cannot be read means this host cannot tell (3).
fn status(cli: &Cli, args: &StatusArgs) -> ExitCode {
    let resolved = layers(cli, false)
        .map_err(anyhow::Error::from)
        .and_then(|l| {
            let settings = HomeFlags::default().resolve(&l)?;
            let dir: PathBuf = l.get_or(
                "CERES_STATE_DIR",
                cli.state_dir.as_deref(),
                DEFAULT_STATE_DIR,
            )?;
            Ok((settings, dir))
        });
    let (settings, dir) = match resolved {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ceres-home: cannot tell: {e:#}");
            return ExitCode::from(crate::local_status::EXIT_UNKNOWN);
        }
    };
    let tunnel = settings.tunnel.then_some({
        (
            settings.wg_uapi_dir.as_path(),
            settings.tunnel_ifname.as_str(),
        )
    });
    crate::local_status::command(&dir, tunnel, args.json)
}

async fn join(cli: &Cli, args: &JoinArgs) -> anyhow::Result<()> {
    let layers = layers(cli, true)?;
    let dir = state_dir(cli, &layers)?;
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
    if Credentials::exists(&dir, Role::Home) && !args.force {
        let old = Credentials::load(&dir, Role::Home, crate::session::JOIN_HINT)?;
        return Err(CredError::AlreadyEnrolled {
            dir: dir.path().display().to_string(),
            address: old.control_address,
        }
        .into());
    }
    let name = args.name.clone().unwrap_or_else(hostname);
    let creds = Credentials::enroll(&token, Role::Home, "ceres-home", &name, VERSION).await?;
    creds.save(&dir, Role::Home)?;
    let info = creds.info()?;
    println!(
        "joined the VPS at {} as {:?}",
        creds.control_address, info.name
    );
    println!("  CA           {}", token.ca_fingerprint);
    println!(
        "  certificate  valid until {} (renews itself)",
        ceres_pki::rfc3339(ceres_pki::unix_secs(info.not_after))
    );
    println!("  stored in    {}", dir.path().display());
    println!("Next: `ceres-home run` (or `systemctl enable --now ceres-home`).");
    Ok(())
}

async fn run(cli: &Cli, flags: &HomeFlags) -> anyhow::Result<()> {
    let layers = layers(cli, false)?;
    let settings: HomeSettings = flags.resolve(&layers)?;
    let dir = state_dir(cli, &layers)?;
    // Fail fast (before READY) when not joined: a clear message beats a retry
    // loop, and as a configuration error (78) systemd does not restart it.
    match Credentials::load(&dir, Role::Home, crate::session::JOIN_HINT) {
        Err(CredError::NotEnrolled { hint, .. }) => {
            return Err(ConfigError::StateNotSetUp {
                dir: dir.path().to_owned(),
                lacks: "holds no credentials: this host has not joined a VPS".into(),
                advice: hint.into(),
            }
            .into());
        }
        other => other?,
    };
    let cancel = ceres_daemon::shutdown_on_signals()?;
    tracing::info!(name = %settings.name, version = VERSION, "ceres-home running");
    ceres_daemon::notify("READY=1\nSTATUS=connecting to the VPS");
    crate::session::run(settings, dir, cancel).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_completions_and_man_page_are_complete() {
        manual::check_generated::<Cli>(&["join", "run", "status", "completions", "man"])
            .unwrap_or_else(|missing| panic!("{missing}"));
    }

    #[test]
    fn keys_cover_run_flags() {
        let keys = known_keys();
        for k in [
            "CERES_CONTROL_ADDRESS",
            "CERES_NAME",
            "CERES_RECONNECT_MAX",
            "CERES_STATE_DIR",
        ] {
            assert!(keys.contains(&k.to_owned()), "{k} missing from {keys:?}");
        }
    }
}
