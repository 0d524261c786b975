//! The `lb` binary: command line, logging, signals, readiness to systemd. Everything else
//! lives in the library.

mod notify;

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
/// finish (up to --shutdown-timeout) and exit 0; SIGUSR1 reopens access-log files (logrotate);
/// SIGUSR2 is logged and ignored.
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
    /// Reload when the configuration file changes, as on SIGHUP: its contents, or where its
    /// path leads (a Kubernetes ConfigMap swaps a `..data` symlink). Checked every 2 s.
    #[arg(long)]
    watch_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

/// What `lb` does besides running the proxy.
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Print a shell completion script (e.g. `lb completions bash > /etc/bash_completion.d/lb`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff; e.g. `lb man > /usr/local/share/man/man1/lb.1`).
    Man,
}

/// Writes what a [`Command`] asks for to stdout.
fn run_command(command: &Command) -> ExitCode {
    use clap::CommandFactory;
    let mut cli = Cli::command();
    let mut out = std::io::stdout().lock();
    match command {
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut cli, "lb", &mut out);
            ExitCode::SUCCESS
        }
        Command::Man => match clap_mangen::Man::new(cli).render(&mut out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("lb: cannot write the man page: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

/// The log filter from `LB_LOG` (a level such as `debug`, or directives such as
/// `lb=debug,info`), or `info`.
///
/// A value that does not parse must not silence lb, fatal errors included: it is reported on
/// stderr and the default is used. tracing would read a bare word as a target to log at every
/// level and everything else not at all, so `warning` or `verbose` would turn lb silent; here a
/// bare word must be a level (`target=trace` names a target).
///
/// rustls is held to errors unless `LB_LOG` names it: it logs through the `log` crate (bridged
/// into tracing by tracing-subscriber's `tracing-log`), and a client can make it WARN on every
/// handshake (an IP address as SNI, warning alerts, renegotiation attempts). lb's own
/// handshake-failure lines (debug) say what went wrong.
fn log_filter(spec: Option<&str>) -> tracing_subscriber::EnvFilter {
    let spec = spec.map(str::trim).filter(|s| !s.is_empty()).unwrap_or("info");
    let bare_non_level =
        spec.split(',').map(str::trim).find(|d| !d.is_empty() && !d.contains(['=', '[']) && !is_level(d));
    let parsed = match bare_non_level {
        Some(word) => Err(format!("{word:?} is not a level")),
        None => tracing_subscriber::EnvFilter::builder().parse(spec).map_err(|e| e.to_string()),
    };
    let (filter, named_rustls) = match parsed {
        // `off` silences rustls too: only a filter that shows something gets the directive.
        Ok(f) => (
            f,
            spec.trim().eq_ignore_ascii_case("off") || spec.split(',').any(|d| d.trim_start().starts_with("rustls")),
        ),
        Err(why) => {
            eprintln!(
                "lb: LB_LOG={spec:?} is not a log filter ({why}); using \"info\". Levels: {}; or TARGET=LEVEL, comma-separated",
                LEVELS.join(", ")
            );
            ("info".into(), false)
        }
    };
    if named_rustls {
        return filter;
    }
    match "rustls=error".parse() {
        Ok(quiet) => filter.add_directive(quiet),
        Err(_) => filter,
    }
}

/// The level names `LB_LOG` takes.
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// A level as tracing reads one: a name, or 0 (off) to 5 (trace).
fn is_level(word: &str) -> bool {
    LEVELS.iter().any(|l| l.eq_ignore_ascii_case(word)) || matches!(word, "0" | "1" | "2" | "3" | "4" | "5")
}

fn init_logging(format: LogFormat) {
    let filter = log_filter(std::env::var("LB_LOG").ok().as_deref());
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
    if let Some(command) = &cli.command {
        return run_command(command);
    }
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

/// How often `--watch-config` looks at the file: one `stat` and one path resolution.
const WATCH_EVERY: Duration = Duration::from_secs(2);

/// What `--watch-config` compares: where the path leads (symlinks resolved), and that file's
/// modification time and size. `None` parts (the file is gone for a moment) count as a change
/// when it comes back.
#[derive(Debug, PartialEq, Eq)]
struct ConfigStamp {
    target: Option<PathBuf>,
    modified: Option<std::time::SystemTime>,
    len: Option<u64>,
}

impl ConfigStamp {
    fn of(path: &std::path::Path) -> ConfigStamp {
        let meta = std::fs::metadata(path).ok();
        ConfigStamp {
            target: std::fs::canonicalize(path).ok(),
            modified: meta.as_ref().and_then(|m| m.modified().ok()),
            len: meta.map(|m| m.len()),
        }
    }
}

/// A reload (SIGHUP or a changed file), told to systemd: applied or rejected, lb serves on, so
/// it is ready again either way. The outcome is logged by the reload itself.
async fn reload(running: &mut lb::app::Running, config: &std::path::Path) {
    notify::notify("RELOADING=1");
    let _ = running.reload(config).await;
    notify::notify("READY=1");
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
    // Every signal operators send by habit is handled: the default action of USR1/USR2 would
    // kill lb without a word (logrotate's postrotate sends USR1, as for nginx).
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
        signal(SignalKind::user_defined1()),
        signal(SignalKind::user_defined2()),
    );
    let (mut term, mut int, mut hup, mut usr1, mut usr2) = match handlers {
        (Ok(t), Ok(i), Ok(h), Ok(u1), Ok(u2)) => (t, i, h, u1, u2),
        _ => {
            tracing::error!("cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    let workers = if cli.workers == 0 { lb::app::default_workers() } else { cli.workers };
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
    // Every listener is bound and serving: units ordered after lb may start.
    notify::notify("READY=1");
    let mut watched = cli.watch_config.then(|| ConfigStamp::of(&cli.config));
    let mut watch = tokio::time::interval(WATCH_EVERY);
    watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            // The outcome is logged by reload itself.
            _ = hup.recv() => reload(&mut running, &cli.config).await,
            _ = watch.tick(), if watched.is_some() => {
                let now = ConfigStamp::of(&cli.config);
                if watched.as_ref() != Some(&now) {
                    tracing::info!(config = %cli.config.display(), "configuration file changed; reloading");
                    watched = Some(now);
                    reload(&mut running, &cli.config).await;
                }
            }
            _ = usr1.recv() => {
                tracing::info!("SIGUSR1: reopening access logs");
                running.reopen_access_logs();
            }
            _ = usr2.recv() => tracing::info!("SIGUSR2 ignored (lb has no binary upgrade; SIGHUP reloads lb.toml)"),
        }
    }
    notify::notify("STOPPING=1");
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

#[cfg(test)]
mod tests {
    use super::log_filter;

    #[test]
    fn rustls_is_held_to_errors_unless_lb_log_names_it() {
        for spec in [None, Some("info"), Some("debug,lb=trace"), Some("tokio_rustls=debug")] {
            let shown = log_filter(spec).to_string();
            assert!(shown.split(',').any(|d| d == "rustls=error"), "{spec:?}: {shown}");
        }
        let shown = log_filter(Some("info,rustls=warn")).to_string();
        assert!(shown.split(',').any(|d| d == "rustls=warn") && !shown.contains("rustls=error"), "{shown}");
    }

    #[test]
    fn an_lb_log_that_does_not_parse_is_info() {
        for bad in ["warning", "verbose", "lb=loud", "info,chatty"] {
            let shown = log_filter(Some(bad)).to_string();
            assert!(shown.split(',').any(|d| d == "info"), "{bad}: {shown}");
        }
        for good in ["off", "OFF", "4", "lb=debug,warn"] {
            assert!(!log_filter(Some(good)).to_string().split(',').any(|d| d == "info"), "{good}");
        }
        assert!(!log_filter(Some("off")).to_string().contains("rustls"), "off must silence rustls too");
        let shown = log_filter(Some("lb=debug,warn")).to_string();
        assert!(shown.split(',').any(|d| d == "lb=debug") && shown.split(',').any(|d| d == "warn"), "{shown}");
    }
}
