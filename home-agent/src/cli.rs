//! Command line of `ceres-home`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use ceres_config::{ConfigError, DEFAULT_STATE_DIR, Layers, manual};
use ceres_control::Credentials;
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

Two VPSes (each a full public face; outbound mail fails over between them):
  on VPS b:     set CERES_TUNNEL_HOME_ADDRESS=10.77.78.2/24 and
                CERES_TUNNEL_VPS_ADDRESS=10.77.78.1/24 (and the IPv6 pair),
                then ceres-vps token create --role home
  here:         ceres-home join TOKEN-B --vps vps-b   # adds an uplink, priority 20
                ceres-home uplinks                    # both, with tunnel state
                ceres-home priority vps-b 5           # prefer b
                ceres-home leave vps-b                # remove it again

Exit codes: 0 ok, 1 failure, 2 usage error, 78 configuration error.";

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Enrol with the VPS using a one-time token from `ceres-vps token create --role home`.
    Join(JoinArgs),
    /// Remove one uplink (VPS): its credentials and tunnel files; a running
    /// agent stops its tunnel and relays by itself.
    Leave(crate::cli_uplinks::LeaveArgs),
    /// List the uplinks (VPSes) this home has joined, with priority,
    /// interface and, from the running agent, tunnel and outbound state.
    Uplinks(crate::cli_uplinks::UplinksArgs),
    /// Change an uplink's priority (lower is preferred for outbound mail).
    Priority(crate::cli_uplinks::PriorityArgs),
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
    /// Replace the credentials of the uplink of that name (joining a
    /// re-initialised VPS).
    #[arg(long)]
    force: bool,
    /// Name of this uplink (VPS); default the host of its control address.
    /// Joining a second VPS adds an uplink.
    #[arg(long, value_name = "NAME")]
    vps: Option<String>,
    /// Priority of this uplink (lower is preferred); default after every
    /// other one (join order: 10, 20, ...).
    #[arg(long, value_name = "N")]
    priority: Option<u16>,
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
        Command::Leave(args) => {
            crate::cli_uplinks::leave(&state_dir(cli, &layers(cli, true)?)?, args)
        }
        Command::Uplinks(args) => {
            let l = layers(cli, true)?;
            let settings = HomeFlags::default().resolve(&l)?;
            crate::cli_uplinks::list(&state_dir(cli, &l)?, &settings, args)
        }
        Command::Priority(args) => {
            crate::cli_uplinks::priority(&state_dir(cli, &layers(cli, true)?)?, args)
        }
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
    // Several uplinks (issue 16): one section each.
    let several = StateDir::open(&dir)
        .map(|d| crate::agent::dirs(&d))
        .unwrap_or_default();
    if several.len() > 1 || several.first().is_some_and(|(_, d, _)| *d != dir) {
        let rows: Vec<_> = several
            .into_iter()
            .map(|(name, d, slot)| {
                let ifname = crate::uplinks::ifname_for(&settings.tunnel_ifname, slot).ok();
                (name, d, ifname)
            })
            .collect();
        let uapi = settings.tunnel.then_some(settings.wg_uapi_dir.as_path());
        return crate::local_status::command_uplinks(&rows, uapi, args.json);
    }
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
    let store = crate::uplinks::store(&dir);
    let existing = store.list()?;
    let vps = args
        .vps
        .clone()
        .unwrap_or_else(|| ceres_control::store::default_name(&token.control_address));
    // Checked before the one-time token is spent.
    let replaces = store
        .check_new(&vps, &token.ca_fingerprint.to_string(), args.force)
        .map_err(|e| join_advice(e, &existing))?;
    let priority = match (args.priority, &replaces) {
        (Some(p), _) => p,
        (None, Some(old)) => old.priority,
        (None, None) => store.next_priority()?,
    };
    let name = args.name.clone().unwrap_or_else(hostname);
    let creds = Credentials::enroll(&token, Role::Home, "ceres-home", &name, VERSION).await?;
    let entry = store.add(&vps, priority, &creds, replaces.as_ref())?;
    let info = creds.info()?;
    println!(
        "joined the VPS at {} as {:?}",
        creds.control_address, info.name
    );
    println!(
        "  uplink       {} (priority {})",
        entry.name, entry.priority
    );
    println!("  CA           {}", token.ca_fingerprint);
    println!(
        "  certificate  valid until {} (renews itself)",
        ceres_pki::rfc3339(ceres_pki::unix_secs(info.not_after))
    );
    println!("  stored in    {}", entry.dir.display());
    if existing.is_empty()
        || replaces
            .as_ref()
            .is_some_and(|r| r.first_slot && existing.len() == 1)
    {
        println!("Next: `ceres-home run` (or `systemctl enable --now ceres-home`).");
    } else {
        println!(
            "Added uplink {} next to {}: a running agent starts it within seconds by itself \
             (`ceres-home uplinks` shows it); otherwise `ceres-home run`.",
            entry.name,
            ceres_control::store::names(&existing)
        );
    }
    Ok(())
}

/// The store's refusal plus what to do with this command's flags.
pub(crate) fn join_advice(
    e: ceres_control::StoreError,
    existing: &[ceres_control::VpsEntry],
) -> anyhow::Error {
    use ceres_control::StoreError as E;
    let advice = match &e {
        E::DuplicateName { .. } => format!(
            "to add another VPS pass --vps NAME with a new name (joined: {}); to replace this \
             one (a re-initialised VPS) pass --force",
            ceres_control::store::names(existing)
        ),
        E::SameVps { name, .. } => format!(
            "this host already has this VPS as uplink {name:?}; to enrol it again pass \
             --vps {name} --force, or `ceres-home leave {name}` first"
        ),
        _ => return e.into(),
    };
    anyhow::anyhow!("{e}: {advice}")
}

async fn run(cli: &Cli, flags: &HomeFlags) -> anyhow::Result<()> {
    let layers = layers(cli, false)?;
    let settings: HomeSettings = flags.resolve(&layers)?;
    let dir = state_dir(cli, &layers)?;
    // Fail fast (before READY) when not joined: a clear message beats a retry
    // loop, and as a configuration error (78) systemd does not restart it.
    let entries = crate::uplinks::store(&dir).list()?;
    if entries.is_empty() {
        let hint = crate::session::JOIN_HINT;
        return Err(ConfigError::StateNotSetUp {
            dir: dir.path().to_owned(),
            lacks: "holds no credentials: this host has not joined a VPS".into(),
            advice: hint.into(),
        }
        .into());
    }
    // One VPS in the top directory: exactly the single-VPS agent.
    let single = entries.len() == 1 && entries[0].first_slot;
    if single {
        Credentials::load(&dir, Role::Home, crate::session::JOIN_HINT)?;
    }
    let cancel = ceres_daemon::shutdown_on_signals()?;
    tracing::info!(name = %settings.name, version = VERSION, "ceres-home running");
    ceres_daemon::notify("READY=1\nSTATUS=connecting to the VPS");
    if single {
        // Exactly the single-VPS agent, until a second VPS joins: then it
        // stops in order and comes back as several uplinks (the tunnel to the
        // first VPS is down for the moment that takes).
        let one = cancel.child_token();
        let watcher = tokio::spawn(watch_for_more(dir.clone(), one.clone()));
        let result = crate::session::run(settings.clone(), dir.clone(), one).await;
        watcher.abort();
        if result.is_err() || cancel.is_cancelled() {
            return result;
        }
        tracing::info!("another VPS joined: running several uplinks");
        crate::agent::run(settings, dir, cancel).await
    } else {
        tracing::info!(uplinks = %ceres_control::store::names(&entries), "running several uplinks");
        crate::agent::run(settings, dir, cancel).await
    }
}

/// Cancels `one` (the single-VPS agent) once the store holds more than
/// the first VPS.
async fn watch_for_more(dir: StateDir, one: tokio_util::sync::CancellationToken) {
    let store = crate::uplinks::store(&dir);
    loop {
        tokio::select! {
            () = one.cancelled() => return,
            () = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
        }
        if store.list().is_ok_and(|e| e.len() > 1) {
            one.cancel();
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_completions_and_man_page_are_complete() {
        manual::check_generated::<Cli>(&[
            "join",
            "leave",
            "uplinks",
            "priority",
            "run",
            "status",
            "completions",
            "man",
        ])
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
