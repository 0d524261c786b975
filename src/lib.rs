//! lb: a Layer-4/7 load-balancing reverse proxy.
//!
//! `lb.toml` in, balanced traffic out. A listener accepts connections and hands each HTTP
//! request (L7) or TCP session (L4) to the balancing strategy of its pool, which picks from an
//! immutable, atomically swapped snapshot of the pool's backends.
//!
//! # Layout
//!
//! - [`config`]: lb.toml → validated [`config::Config`], errors as `PATH:LINE:COL: message`.
//! - [`pool`]: `Backend` (address, weight, in-flight count, idle connections) and the `Pool`
//!   snapshot behind an `ArcSwap`.
//! - [`balance`]: the `Strategy` trait and one file per strategy.
//! - [`health`]: up/down with rise/fall, active probes, passive marks, snapshot publishing.
//! - [`proxy`]: forwarding: HTTP (headers, retries, upgrades), TCP, upstream connections (plain
//!   or TLS), the PROXY protocol (read from fronting proxies, written to backends), and the
//!   guard against hostile clients (request checks, body limit, connection deadlines).
//! - [`server`]: listening sockets, accept loops, connection limits, hyper connection setup.
//! - [`access_log`]: one line per request or session, written by its own thread.
//! - [`admin`]: the admin listener (`/metrics`, `/healthz`, `/status`).
//! - [`status`]: the status page and `/status.json`.
//! - [`app`]: assembles and starts everything from a config, applies reloads, shuts down.
//! - [`reload`]: the diff between two configs, logged as the reload summary.
//! - [`shutdown`]: the drain signal shared by accept loops, connections and sessions.
//! - [`tls`]: rustls server configs from certificate files, SNI certificate choice.
//! - [`workers`]: the data-plane threads, one single-threaded runtime each.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod access_log;
pub mod admin;
pub mod app;
pub mod backend;
pub mod balance;
pub mod config;
pub mod health;
pub mod http1;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod proxy_protocol;
pub mod reload;
pub mod server;
pub mod shutdown;
pub mod tls;
pub mod upstream;
pub mod workers;
