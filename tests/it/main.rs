//! lb's integration tests, built as one binary: real backends, real clients and lb itself
//! (in-process, or the spawned binary where signals and process limits are involved) over
//! sockets on 127.0.0.1. One binary links once and runs every test in one pool of threads,
//! instead of one link and one sequential run per file. Shared helpers are in [`support`].

mod support;

mod access_log;
mod balancing;
mod check_cli;
mod deploy;
mod failover;
mod forwarding;
mod h2_bounds;
mod health_streaks;
mod hostile;
mod idle_sessions;
mod metrics;
mod operator_signals;
mod reload;
mod shutdown;
mod slow_read;
mod status_page;
mod strategies_more;
mod tcp_tls;
mod tls_hardening;
mod upstream_h1;
mod upstream_tls_proxy;
