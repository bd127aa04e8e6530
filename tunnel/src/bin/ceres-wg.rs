//! `ceres-wg`: the CERES tunnel engine as a standalone WireGuard daemon, for
//! benchmarks, interop tests and debugging. Brings one interface up from a
//! wg-style config file and/or flags and runs until SIGINT or SIGTERM.
//! Keys are only ever read from files, never from the command line.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use ceres_tunnel::{
    DEFAULT_MTU, FileConfig, PeerConfig, PresharedKey, PrivateKey, Tunnel, TunnelConfig,
    parse_allowed_ips, parse_keepalive,
};
use clap::{Parser, Subcommand};
use ipnet::IpNet;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Exit code for configuration errors, so scripts can tell them from runtime failures.
const EXIT_CONFIG: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "CERES userspace WireGuard interface (boringtun engine)"
)]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// wg-style config file ([Interface] and one [Peer]); flags override it.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Interface name.
    #[arg(long)]
    name: Option<String>,
    /// Our tunnel address with prefix, e.g. 10.77.77.1/24.
    #[arg(long)]
    address: Option<IpNet>,
    /// UDP listen port (0 = any free port).
    #[arg(long)]
    listen_port: Option<u16>,
    /// UDP listen address (default `::`, which also accepts IPv4).
    #[arg(long)]
    listen_address: Option<IpAddr>,
    /// File holding our base64 private key.
    #[arg(long)]
    private_key_file: Option<PathBuf>,
    /// Tunnel MTU.
    #[arg(long)]
    mtu: Option<u16>,
    /// Peer public key (base64; public, so a flag is fine).
    #[arg(long)]
    peer_public_key: Option<String>,
    /// File holding the base64 pre-shared key.
    #[arg(long)]
    preshared_key_file: Option<PathBuf>,
    /// Peer endpoint, IP:port or [IPv6]:port.
    #[arg(long)]
    endpoint: Option<SocketAddr>,
    /// Networks routed to the peer, comma separated.
    #[arg(long)]
    allowed_ips: Option<String>,
    /// Persistent keepalive seconds, or `off`.
    #[arg(long)]
    persistent_keepalive: Option<String>,
    /// Directory for the UAPI socket (default /var/run/wireguard).
    #[arg(long)]
    uapi_dir: Option<PathBuf>,
    /// Once the interface is up, write a JSON line (ifname, public key,
    /// listen port) here, atomically: a machine-readable readiness signal.
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Write a new private key (base64) to FILE, created with mode 0600.
    Genkey {
        /// Output file; must not exist.
        file: PathBuf,
    },
    /// Read a private key on stdin, print its public key.
    Pubkey,
}

fn read_secret_file(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading key file {}", path.display()))
}

fn build(args: &Args) -> anyhow::Result<(TunnelConfig, Option<PeerConfig>)> {
    let mut fc = match &args.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            FileConfig::parse(&text).with_context(|| format!("in {}", p.display()))?
        }
        None => FileConfig::default(),
    };
    // Flags override the file.
    macro_rules! over {
        ($field:ident, $arg:expr) => {
            if let Some(v) = $arg.clone() {
                fc.$field = Some(v);
            }
        };
    }
    over!(name, args.name);
    over!(address, args.address);
    over!(listen_port, args.listen_port);
    over!(listen_address, args.listen_address);
    over!(private_key_file, args.private_key_file);
    over!(mtu, args.mtu);
    over!(preshared_key_file, args.preshared_key_file);
    over!(endpoint, args.endpoint);
    if let Some(k) = &args.peer_public_key {
        fc.peer_public_key = Some(k.parse().context("--peer-public-key")?);
    }
    if let Some(a) = &args.allowed_ips {
        fc.allowed_ips = parse_allowed_ips(a)?;
    }
    if let Some(k) = &args.persistent_keepalive {
        fc.persistent_keepalive = parse_keepalive(k)?;
    }

    let name = fc
        .name
        .clone()
        .context("missing interface name (--name or Name =)")?;
    let address = fc
        .address
        .context("missing tunnel address (--address or Address =)")?;
    let key_file = fc
        .private_key_file
        .clone()
        .context("missing private key file (--private-key-file or PrivateKeyFile =)")?;
    let private_key: PrivateKey = read_secret_file(&key_file)?
        .parse()
        .with_context(|| format!("private key in {}", key_file.display()))?;
    let mut cfg = TunnelConfig::new(name, address, private_key);
    cfg.mtu = fc.mtu.unwrap_or(DEFAULT_MTU);
    cfg.listen = fc.listen();
    cfg.uapi_dir = args.uapi_dir.clone();

    let peer = match fc.peer_public_key {
        Some(public_key) => {
            let preshared_key = match &fc.preshared_key_file {
                Some(p) => Some(
                    read_secret_file(p)?
                        .parse::<PresharedKey>()
                        .with_context(|| format!("pre-shared key in {}", p.display()))?,
                ),
                None => None,
            };
            Some(PeerConfig {
                public_key,
                preshared_key,
                endpoint: fc.endpoint,
                allowed_ips: fc.allowed_ips.clone(),
                persistent_keepalive: fc.persistent_keepalive,
            })
        }
        None if fc.has_peer || fc.endpoint.is_some() || !fc.allowed_ips.is_empty() => {
            bail!("a peer needs a public key (--peer-public-key or PublicKey =)")
        }
        None => None,
    };
    Ok((cfg, peer))
}

fn write_ready(path: &Path, json: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{json}\n"))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn genkey(file: &Path) -> anyhow::Result<()> {
    let key = PrivateKey::generate();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .with_context(|| format!("creating {}", file.display()))?;
    writeln!(f, "{}", key.to_base64())?;
    println!("{}", key.public_key());
    Ok(())
}

async fn run(args: Args) -> Result<(), (u8, anyhow::Error)> {
    let (cfg, peer) = build(&args).map_err(|e| (EXIT_CONFIG, e))?;
    let token = CancellationToken::new();
    let tunnel = Tunnel::start(cfg, peer, token.clone())
        .await
        .map_err(|e| (1, e.into()))?;
    if let Some(p) = &args.ready_file {
        let json = serde_json::json!({
            "ifname": tunnel.stats().ifname,
            "public_key": tunnel.public_key().to_string(),
            "listen_port": tunnel.listen_port(),
            "pid": std::process::id(),
        });
        write_ready(p, &json.to_string()).map_err(|e| (1, e))?;
    }
    let mut term = signal(SignalKind::terminate()).map_err(|e| (1, e.into()))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| (1, e.into()))?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
        _ = token.cancelled() => {}
    }
    tunnel.shutdown().await;
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match &args.cmd {
        Some(Cmd::Genkey { file }) => {
            return match genkey(file) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ceres-wg: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Cmd::Pubkey) => {
            let mut s = String::new();
            let r = std::io::stdin()
                .read_to_string(&mut s)
                .map_err(anyhow::Error::from)
                .and_then(|_| s.parse::<PrivateKey>().map_err(anyhow::Error::from));
            return match r {
                Ok(k) => {
                    println!("{}", k.public_key());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ceres-wg: {e:#}");
                    ExitCode::from(EXIT_CONFIG)
                }
            };
        }
        None => {}
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ceres-wg: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, e)) => {
            eprintln!("ceres-wg: {e:#}");
            ExitCode::from(code)
        }
    }
}
