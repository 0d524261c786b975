//! The `lb` binary: command line, logging, signals. Everything else lives in the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use tokio::signal::unix::{signal, SignalKind};

/// jemalloc with its background thread: it gives freed memory back to the system within
/// seconds of a burst (slow readers, a spike of connections) even when lb then sits idle;
/// glibc's malloc kept the high-water mark for good (see Cargo.toml).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A Layer-4/7 load-balancing reverse proxy.
///
/// Signals: SIGHUP reloads the config; SIGTERM/SIGINT stop accepting, let in-flight requests
/// finish (up to --shutdown-timeout) and exit 0.
#[derive(Debug, Parser)]
#[command(name = "lb", version, about, long_about)]
struct Cli {
    /// Path to the configuration file.
    #[arg(long, short = 'c', value_name = "PATH", default_value = "lb.toml")]
    config: PathBuf,
    /// Validate the configuration (syntax and meaning), print a summary and exit.
    #[arg(long)]
    check: bool,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    /// On SIGTERM/SIGINT, how long in-flight requests and sessions may take to finish.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    shutdown_timeout: Duration,
    /// Data-plane threads (one single-threaded event loop each, like nginx's worker
    /// processes). 0: one per CPU core.
    #[arg(long, value_name = "N", default_value_t = 0)]
    workers: usize,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LB_LOG").unwrap_or_else(|_| "info".into());
    // Colours only on a terminal: logs piped to a file or a journal stay plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.check {
        return check(&cli);
    }
    init_logging(cli.log_format);
    let loaded = match lb::config::load(&cli.config) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    // The control plane (signals, reloads, health checks, admin) needs little: one thread. The
    // data plane runs on the workers that `Running` starts.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(cli, loaded))
}

/// `--check`: errors and warnings to stderr, the summary to stdout.
fn check(cli: &Cli) -> ExitCode {
    match lb::config::load(&cli.config) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("{w}");
            }
            println!("{}: OK: {}", cli.config.display(), loaded.config.summary());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(cli: Cli, loaded: lb::config::Loaded) -> ExitCode {
    let (mut term, mut int, mut hup) =
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup())) {
            (Ok(t), Ok(i), Ok(h)) => (t, i, h),
            _ => {
                tracing::error!("cannot install signal handlers");
                return ExitCode::FAILURE;
            }
        };
    let workers = if cli.workers == 0 { lb::workers::default_count() } else { cli.workers };
    let mut running = match lb::app::Running::start_with_workers(loaded.config.clone(), workers).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        config = %cli.config.display(),
        workers,
        "lb {} started: {}",
        env!("CARGO_PKG_VERSION"),
        loaded.config.summary()
    );
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            // The outcome is logged by reload itself.
            _ = hup.recv() => { let _ = running.reload(&cli.config).await; }
        }
    }
    tracing::info!(timeout = ?cli.shutdown_timeout, "shutting down: draining in-flight requests (a second signal stops at once)");
    tokio::select! {
        _ = running.shutdown(cli.shutdown_timeout) => {}
        // An operator who does not want to wait for the drain says so again, as with nginx.
        _ = term.recv() => {
            tracing::warn!("second signal: exiting without waiting for the drain");
            return ExitCode::FAILURE;
        }
        _ = int.recv() => {
            tracing::warn!("second signal: exiting without waiting for the drain");
            return ExitCode::FAILURE;
        }
    }
    tracing::info!("bye");
    ExitCode::SUCCESS
}
