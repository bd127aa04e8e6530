//! Process plumbing shared by the CERES agents: graceful shutdown on SIGINT
//! and SIGTERM, readiness via sd_notify, logging set-up, blocking work kept
//! off the async workers, the local status files, and other hosts' text
//! made safe for a terminal.

mod blocking;
pub mod metrics;
pub mod status_file;
pub mod terminal;

use std::os::unix::net::UnixDatagram;

use tokio_util::sync::CancellationToken;

pub use blocking::{ShuttingDown, blocking};

/// Cancels the returned token on the first SIGINT or SIGTERM, so everything
/// that hangs off it drains; a second signal exits at once.
pub fn shutdown_on_signals() -> std::io::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let which = tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        };
        tracing::info!(signal = which, "shutting down");
        notify("STOPPING=1");
        cancel.cancel();
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        };
        tracing::warn!("second signal: exiting without draining");
        std::process::exit(130);
    });
    Ok(token)
}

/// Sends `state` (e.g. `READY=1`, `STATUS=...`) to the service manager when
/// `NOTIFY_SOCKET` is set; does nothing otherwise.
///
/// This is systemd's `Type=notify` protocol; the tests use it too, listening
/// on a socket of their own, so they wait for readiness without sleeping.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let result = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
            .and_then(|addr| sock.send_to_addr(state.as_bytes(), &addr))
    } else {
        sock.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// Logging to stderr; `RUST_LOG` overrides the default filter. Journald adds
/// its own timestamps, so they are left out when running under systemd.
pub fn init_logging(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().init();
    } else {
        builder.init();
    }
}

/// Prints a command's error and maps it to the exit code: 78 when a
/// [`ceres_config::ConfigError`] is anywhere in the chain ("fix the file"),
/// 1 otherwise.
pub fn exit_code(program: &str, result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if e.chain().any(|c| c.is::<ceres_config::ConfigError>()) => {
            eprintln!("{program}: configuration error: {e:#}");
            std::process::ExitCode::from(ceres_config::EXIT_CONFIG as u8)
        }
        Err(e) => {
            eprintln!("{program}: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
