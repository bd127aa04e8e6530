//! Command line of `ceres-vps`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use ceres_config::{ConfigError, DEFAULT_STATE_DIR, HumanDuration, Layers, manual};
use ceres_pki::Role;
use ceres_state::StateDir;
use clap::{Args, Parser, Subcommand};

use crate::settings::{VpsFlags, VpsSettings};
use crate::state::{StateError, VpsState};
use crate::tokens::TokenStore;

/// The CERES agent on the VPS.
///
/// Makes this VPS the public face of a mail server at home: it holds the
/// CA that the home agent and cerectl enrol with, keeps the WireGuard tunnel
/// to home, relays the mail ports to it and sends home's outbound mail from
/// this address.
///
/// Every setting is a flag and a key in the config file: --public-ip is
/// CERES_PUBLIC_IP, and so on. Flags win over the environment, which wins
/// over the file.
#[derive(Debug, Parser)]
#[command(name = "ceres-vps", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// Config file (KEY=value lines, also usable as systemd EnvironmentFile=).
    #[arg(long, global = true, value_name = "FILE", default_value = ceres_config::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// State directory: CA, keys, certificates, tokens (0700). [CERES_STATE_DIR]
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

const AFTER_HELP: &str = "\
First steps on a new VPS:
  ceres-vps init --public-ip 203.0.113.10 --domain example.com
  ceres-vps run                                   # or: systemctl enable --now ceres-vps
  ceres-vps token create --role home              # then at home: ceres-home join TOKEN
  ceres-vps token create --role admin             # then anywhere: cerectl enroll TOKEN

Exit codes: 0 ok, 1 failure, 2 usage error, 78 configuration error.";

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the CA, the server certificate and the config file.
    Init(InitArgs),
    /// Manage one-time join tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Run the agent (until SIGINT or SIGTERM).
    Run(RunArgs),
    /// What this host knows without the control plane: agent, home's
    /// session, tunnel, relays, egress. Exit 0 ok, 1 something broken, 3 cannot tell.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Client certificates issued by this VPS's CA.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(manual::CompletionsArgs),
    /// Print the man page, or with --out-dir write one page per subcommand.
    Man(manual::ManArgs),
}

/// `init` arguments.
#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    flags: VpsFlags,
}

/// `run` arguments.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    flags: VpsFlags,
}

/// `cert` subcommands.
#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// List issued client certificates (name, role, serial, expiry, revoked).
    List {
        /// Print JSON (an object with a `certificates` array) for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a host: `cert revoke NAME` with the name given at enrolment
    /// (a serial from `cert list` works too). The certificate and every one
    /// renewed from it are refused from now on; the running agent ends their
    /// sessions at once and, for the home agent, removes its WireGuard peer
    /// and egress until a new home joins. No restart needed.
    Revoke {
        /// The name given at enrolment (see `cert list`), or a serial (hex).
        what: String,
    },
}

/// `token` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a new one-time join token (alone on stdout).
    Create {
        /// home: for `ceres-home join`; admin: for `cerectl enroll`.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// How long the token stays valid.
        #[arg(long, default_value = "1h", value_name = "DURATION")]
        ttl: HumanDuration,
    },
    /// List the tokens not used yet and not expired: id, role, creation
    /// time, expiry (never the secret: the VPS does not have it).
    List {
        /// Print JSON (an object with a `tokens` array) for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Revoke an unused token by its id from `token list`: joining with it
    /// is refused from now on.
    Revoke {
        /// The id from `token list` (a unique prefix of it is enough).
        id: String,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
}

/// Result of a command. A [`ConfigError`] anywhere in the chain means exit 78.
type Outcome = anyhow::Result<()>;

/// Every key `ceres-vps` accepts in the config file or environment.
pub fn known_keys() -> Vec<String> {
    let mut keys = ceres_config::keys_of(&RunArgs::augment_args(clap::Command::new("run")), &[]);
    keys.push("CERES_STATE_DIR".into());
    keys
}

fn state_dir(cli: &Cli, layers: &Layers) -> Result<PathBuf, ConfigError> {
    layers.get_or(
        "CERES_STATE_DIR",
        cli.state_dir.as_deref(),
        DEFAULT_STATE_DIR,
    )
}

fn load(
    cli: &Cli,
    flags: &VpsFlags,
    may_be_missing: bool,
) -> Result<(Layers, VpsSettings), ConfigError> {
    // The default file may be absent (every key can come from flags), and
    // `init` is what creates the file.
    let missing_ok = may_be_missing || cli.config == Path::new(ceres_config::DEFAULT_CONFIG);
    let layers = Layers::load_path(&cli.config, missing_ok)?;
    layers.check_keys(&known_keys())?;
    let settings = flags.resolve(&layers)?;
    Ok((layers, settings))
}

/// Parses the command line, runs it, and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Status { json } = &cli.command {
        return status(&cli, *json);
    }
    ceres_daemon::init_logging("info");
    ceres_pki::tls::install_crypto_provider();
    ceres_daemon::exit_code("ceres-vps", dispatch(&cli))
}

fn dispatch(cli: &Cli) -> Outcome {
    match &cli.command {
        Command::Init(args) => init(cli, &args.flags),
        Command::Token(TokenCommand::Create { role, ttl }) => token_create(cli, *role, ttl.0),
        Command::Token(TokenCommand::List { json }) => token_list(cli, *json),
        Command::Token(TokenCommand::Revoke { id }) => token_revoke(cli, id),
        Command::Cert(cmd) => cert(cli, cmd),
        // Answered in `main`: it has its own exit codes and logs nothing.
        Command::Status { .. } => Ok(()),
        Command::Run(args) => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(run(cli, &args.flags))
        }
        Command::Completions(args) => {
            manual::completions::<Cli>(args);
            Ok(())
        }
        Command::Man(args) => Ok(manual::man::<Cli>(args)?),
    }
}

fn init(cli: &Cli, flags: &VpsFlags) -> Outcome {
    let (layers, settings) = load(cli, flags, true)?;
    let dir = StateDir::open(state_dir(cli, &layers)?)?;
    let (state, server) = VpsState::init(dir, &settings)?;
    // A state directory given on the command line (or in the environment) is
    // recorded, so later commands that read this config find the state.
    let told_state_dir = match layers.raw("CERES_STATE_DIR", cli.state_dir.as_deref()) {
        Some((_, ceres_config::Origin::Flag(_) | ceres_config::Origin::Env)) => Some(
            std::fs::canonicalize(state.dir.path())
                .with_context(|| format!("resolving {}", state.dir.path().display()))?
                .display()
                .to_string(),
        ),
        _ => None,
    };
    write_config_if_missing(&cli.config, flags, told_state_dir)?;
    let fp = state.ca.fingerprint();
    println!("CERES VPS initialised in {}", state.dir.path().display());
    println!("  domain          {}", settings.domain);
    println!("  mail host       {}", settings.mail_host);
    println!(
        "  public address  {}",
        settings
            .public_ips
            .iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  control plane   {} (open this TCP port in the VPS firewall)",
        settings.control_address
    );
    println!("  CA              {fp}");
    println!(
        "  server cert     valid until {}",
        ceres_pki::rfc3339(ceres_pki::unix_secs(server.info.not_after))
    );
    // Later commands find the state through the config file: name a
    // non-default one in the commands printed here, so copying them works.
    let vps = if cli.config == Path::new(ceres_config::DEFAULT_CONFIG) {
        "ceres-vps".to_owned()
    } else {
        format!("ceres-vps --config {}", cli.config.display())
    };
    println!(
        "Next: `{vps} run` (or the service), then in another terminal \
         `{vps} token create --role home` for the home server"
    );
    println!("      and `{vps} token create --role admin` for cerectl.");
    Ok(())
}

/// Writes the keys given on the `init` command line into the config file, so
/// `run` needs no flags: a new file is created; an existing one gets the
/// missing keys appended, and a key it already sets must agree.
fn write_config_if_missing(path: &Path, flags: &VpsFlags, state_dir: Option<String>) -> Outcome {
    let given = [
        ("CERES_STATE_DIR", &state_dir),
        ("CERES_PUBLIC_IP", &flags.public_ip),
        ("CERES_DOMAIN", &flags.domain),
        ("CERES_MAIL_HOST", &flags.mail_host),
        ("CERES_CONTROL_LISTEN", &flags.control_listen),
        ("CERES_CONTROL_ADDRESS", &flags.control_address),
        ("CERES_CLIENT_CERT_TTL", &flags.client_cert_ttl),
        ("CERES_REPORT_INTERVAL", &flags.report_interval),
    ];
    let (mut text, existing) = if path.exists() {
        (
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
            Some(Layers::load(Some(path))?),
        )
    } else {
        (
            String::from(
                "# CERES VPS agent configuration, written by `ceres-vps init`.\n\
                 # Every key is also a flag (CERES_PUBLIC_IP = --public-ip); see `ceres-vps run --help`.\n",
            ),
            None,
        )
    };
    let mut added = false;
    for (key, value) in given {
        let Some(v) = value else { continue };
        match existing
            .as_ref()
            .and_then(|l| l.file().and_then(|_| l.raw(key, None)))
        {
            Some((file_v, _)) if file_v == *v => {}
            Some((file_v, origin)) => anyhow::bail!(
                "{key} is {file_v:?} in {origin} but {v:?} was given; the state was created \
                 with the given value — edit the config file to match"
            ),
            None => {
                if !text.is_empty() && !text.ends_with('\n') {
                    text.push('\n');
                }
                text.push_str(&format!("{key}={v}\n"));
                added = true;
            }
        }
    }
    if !added {
        return Ok(());
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    ceres_state::write_atomic(path, text.as_bytes(), 0o644)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

fn token_create(cli: &Cli, role: Role, ttl: std::time::Duration) -> Outcome {
    let (layers, settings) = load(cli, &VpsFlags::default(), false)?;
    let state = VpsState::load(StateDir::open(state_dir(cli, &layers)?)?)?;
    let store = TokenStore::open(state.tokens_dir()?)?;
    let token = store.create(
        role,
        ttl,
        state.ca.fingerprint(),
        settings.control_address.clone(),
    )?;
    let next = match role {
        Role::Home => "on the home server: ceres-home join TOKEN",
        Role::Admin => "where you run cerectl: cerectl enroll TOKEN",
    };
    eprintln!(
        "one-time {role} token for {}, valid for {}; use it {next}",
        settings.control_address,
        humantime_short(ttl)
    );
    println!("{}", token.encode());
    Ok(())
}

/// The token store of the state the config points at.
fn token_store(cli: &Cli) -> anyhow::Result<TokenStore> {
    let missing_ok = cli.config == Path::new(ceres_config::DEFAULT_CONFIG);
    let layers = Layers::load_path(&cli.config, missing_ok)?;
    layers.check_keys(&known_keys())?;
    let state = VpsState::load(StateDir::open(state_dir(cli, &layers)?)?)?;
    Ok(TokenStore::open(state.tokens_dir()?)?)
}

fn token_list(cli: &Cli, json: bool) -> Outcome {
    let tokens = token_store(cli)?.list()?;
    if json {
        #[derive(serde::Serialize)]
        struct Listed<'a> {
            id: &'a str,
            role: Role,
            created: String,
            expires: String,
        }
        let tokens: Vec<Listed<'_>> = tokens
            .iter()
            .map(|t| Listed {
                id: &t.id,
                role: t.role,
                created: ceres_pki::rfc3339(t.created_unix),
                expires: ceres_pki::rfc3339(t.expires_unix),
            })
            .collect();
        println!("{}", serde_json::json!({ "tokens": tokens }));
        return Ok(());
    }
    if tokens.is_empty() {
        eprintln!("no unused tokens (create one with `ceres-vps token create --role home|admin`)");
        return Ok(());
    }
    println!("{:<12}  {:<5}  {:<20}  expires", "id", "role", "created");
    for t in tokens {
        println!(
            "{:<12}  {:<5}  {:<20}  {}",
            t.id,
            t.role.to_string(),
            ceres_pki::rfc3339(t.created_unix),
            ceres_pki::rfc3339(t.expires_unix)
        );
    }
    Ok(())
}

fn token_revoke(cli: &Cli, id: &str) -> Outcome {
    let t = token_store(cli)?.revoke(id)?;
    println!(
        "revoked {} token {} (created {}): joining with it is refused from now on",
        t.role,
        t.id,
        ceres_pki::rfc3339(t.created_unix)
    );
    Ok(())
}

fn cert(cli: &Cli, cmd: &CertCommand) -> Outcome {
    let missing_ok = cli.config == Path::new(ceres_config::DEFAULT_CONFIG);
    let layers = Layers::load_path(&cli.config, missing_ok)?;
    let state = VpsState::load(StateDir::open(state_dir(cli, &layers)?)?)?;
    match cmd {
        CertCommand::List { json: true } => {
            #[derive(serde::Serialize)]
            struct Listed {
                serial: String,
                role: String,
                name: String,
                lineage: String,
                issued: String,
                valid_until: String,
                revoked: bool,
            }
            let certificates: Vec<Listed> = crate::certs::list(&state.dir)?
                .into_iter()
                .map(|(i, revoked)| Listed {
                    lineage: i.lineage().to_owned(),
                    issued: ceres_pki::rfc3339(i.issued_unix),
                    valid_until: ceres_pki::rfc3339(i.not_after_unix),
                    serial: i.serial,
                    role: i.role,
                    name: i.name,
                    revoked,
                })
                .collect();
            println!("{}", serde_json::json!({ "certificates": certificates }));
        }
        CertCommand::List { json: false } => {
            println!(
                "{:<32}  {:<6}  {:<24}  {:<32}  {:<20}  status",
                "serial", "role", "name", "lineage", "valid until"
            );
            for (i, revoked) in crate::certs::list(&state.dir)? {
                println!(
                    "{:<32}  {:<6}  {:<24}  {:<32}  {:<20}  {}",
                    i.serial,
                    i.role,
                    i.name,
                    i.lineage(),
                    ceres_pki::rfc3339(i.not_after_unix),
                    if revoked { "REVOKED" } else { "valid" }
                );
            }
        }
        CertCommand::Revoke { what } => {
            for i in crate::certs::revoke(&state.dir, what)? {
                println!(
                    "revoked {} ({} {}, lineage {}): refused from now on; a running agent ends its sessions{}",
                    i.serial,
                    i.role,
                    i.name,
                    i.lineage(),
                    if i.role == "home" {
                        " and removes its tunnel and egress"
                    } else {
                        ""
                    }
                );
            }
        }
    }
    Ok(())
}

fn humantime_short(d: std::time::Duration) -> String {
    ceres_config::HumanDuration(d).to_string()
}

/// `status`: the settings say where the state and the tunnel's socket are;
/// a configuration that cannot be read means this host cannot tell (3).
fn status(cli: &Cli, json: bool) -> ExitCode {
    let resolved = load(cli, &VpsFlags::default(), false)
        .and_then(|(layers, settings)| Ok((state_dir(cli, &layers)?, settings)));
    let (dir, settings) = match resolved {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ceres-vps: cannot tell: {e}");
            return ExitCode::from(crate::local_status::EXIT_UNKNOWN);
        }
    };
    let t = &settings.tunnel;
    let tunnel = t
        .enabled
        .then_some((t.uapi_dir.as_path(), t.ifname.as_str()));
    crate::local_status::command(&dir, tunnel, json)
}

/// The `init` command line that sets up what `cli` points at (its
/// `--config` and `--state-dir` when they are not the defaults), for the
/// message `run` gives when this VPS was never initialised.
fn init_command(cli: &Cli) -> String {
    let mut cmd = String::from("ceres-vps");
    if cli.config != Path::new(ceres_config::DEFAULT_CONFIG) {
        cmd.push_str(&format!(" --config {}", cli.config.display()));
    }
    if let Some(dir) = &cli.state_dir {
        cmd.push_str(&format!(" --state-dir {dir}"));
    }
    cmd.push_str(" init --public-ip IP --domain DOMAIN");
    cmd
}

async fn run(cli: &Cli, flags: &VpsFlags) -> Outcome {
    // Before `init` there is neither a CA nor (usually) a config, and
    // "CERES_PUBLIC_IP is not set" would send the reader to the wrong fix:
    // a missing config file, a missing required key or a state directory
    // without a CA, when the state is not initialised, say to run `init`.
    // A key that is set but wrong is named as such. All of them are
    // configuration errors (78): the unit's `RestartPreventExitStatus=78`
    // stops the agent with the message instead of restarting it every few
    // seconds.
    let advice = || {
        format!(
            "run `{}` first (it writes the config and the CA), then start the agent again",
            init_command(cli)
        )
    };
    let missing_ok = cli.config == Path::new(ceres_config::DEFAULT_CONFIG);
    let layers = match Layers::load_path(&cli.config, missing_ok) {
        Err(ConfigError::Io { path, error }) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(ConfigError::StateNotSetUp {
                dir: path,
                lacks: "does not exist: this VPS has not been initialised".into(),
                advice: advice(),
            }
            .into());
        }
        other => other?,
    };
    layers.check_keys(&known_keys())?;
    let dir = state_dir(cli, &layers)?;
    let not_initialised = |dir: PathBuf| ConfigError::StateNotSetUp {
        dir,
        lacks: "holds no CA: this VPS has not been initialised".into(),
        advice: advice(),
    };
    // Opening creates the directory: not before `init` has made it.
    let state = if dir.exists() {
        match VpsState::load(StateDir::open(&dir)?) {
            Err(StateError::NotInitialised(_)) => None,
            other => Some(other?),
        }
    } else {
        None
    };
    let settings = match (flags.resolve(&layers), state.is_some()) {
        (Err(ConfigError::Missing { key, .. }), false) => {
            return Err(ConfigError::StateNotSetUp {
                dir,
                lacks: format!(
                    "holds no CA and {key} is not set: this VPS has not been initialised"
                ),
                advice: advice(),
            }
            .into());
        }
        (settings, _) => settings?,
    };
    let Some(state) = state else {
        return Err(not_initialised(dir).into());
    };
    let cancel = ceres_daemon::shutdown_on_signals()?;
    let listener = tokio::net::TcpListener::bind(settings.control_listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (CERES_CONTROL_LISTEN)",
                settings.control_listen
            )
        })?;
    let bound = listener.local_addr()?;
    tracing::info!(control = %bound, domain = %settings.domain, version = crate::service::VERSION, "ceres-vps running");
    ceres_daemon::notify(&format!("READY=1\nSTATUS=control plane on {bound}"));
    crate::service::run(settings, state, listener, cancel).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_completions_and_man_page_are_complete() {
        manual::check_generated::<Cli>(&[
            "init",
            "token",
            "run",
            "status",
            "cert",
            "completions",
            "man",
        ])
        .unwrap_or_else(|missing| panic!("{missing}"));
    }

    #[test]
    fn keys_cover_every_run_flag() {
        let keys = known_keys();
        for k in [
            "CERES_PUBLIC_IP",
            "CERES_DOMAIN",
            "CERES_MAIL_HOST",
            "CERES_CONTROL_LISTEN",
            "CERES_STATE_DIR",
        ] {
            assert!(keys.contains(&k.to_owned()), "{k} missing from {keys:?}");
        }
    }
}
