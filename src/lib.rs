//! lb: a Layer-4/7 load-balancing reverse proxy.
//!
//! `lb.toml` in, balanced traffic out. A listener accepts connections and hands each HTTP
//! request (L7) or TCP session (L4) to the balancing strategy of its pool, which picks from an
//! immutable, atomically swapped snapshot of the pool's backends.
//!
//! # Layout
//!
//! Floor by floor, top first. Each module imports only modules on floors below its own (or
//! beside it on the same floor where noted), never one above: there is no import circle.
//!
//! 1. [`app`]: assembles and starts everything from a config, applies reloads, shuts down.
//! 2. `admin`: the admin listener (`/metrics`, `/healthz`, `/status`, `/status.json`).
//! 3. `server`: listening sockets, accept loops, connection limits and deadlines, the checked
//!    HTTP/1 client stream, the HTTP/2 stream executor and flood bounds.
//! 4. `proxy`: forwarding: HTTP (pick, forward, retry, upgrades), TCP, the response body, the
//!    request limits, lb's own answers.
//! 5. `health` (probes and the snapshot publisher) and `metrics` (the registry and the
//!    per-backend collector): producers and observers over pools.
//! 6. `pool`: the immutable `Pool` snapshot behind an `ArcSwap`, built from config keeping
//!    backend state; the rotation with its passive-only fallback; passive marks.
//! 7. `balance`: the `Strategy` trait and one file per strategy, over a `BackendSet`.
//! 8. `backend`: `Backend` and its shared state (in flight, health state, latency estimate,
//!    metric series, idle connections).
//! 9. `upstream`: connecting (TCP, PROXY header, TLS), lb's own HTTP/1.1 client, idle
//!    connections, the request body sent upstream.
//! 10. [`config`]: lb.toml → validated [`config::Config`], errors as `PATH:LINE:COL: message`;
//!     the strategy vocabulary; the diff logged as the reload summary.
//! 11. Leaves, importing nothing of lb: `http1` (limits, request framing scanner, header
//!     hygiene), `proxy_protocol`, `tls` (server and client rustls material),
//!     `access_log`, `shutdown`, `workers`.
//!
//! Only [`app`] (start, reload, stop) and [`config`] (load and check lb.toml) are the library's
//! interface; every other module is the crate's own. What benches, fuzz targets and the
//! integration tests need from inside is re-exported, undocumented, by [`internals`].
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub(crate) mod access_log;
pub(crate) mod admin;
pub mod app;
pub(crate) mod backend;
pub(crate) mod balance;
pub mod config;
pub(crate) mod health;
pub(crate) mod http1;
#[doc(hidden)]
pub mod internals;
pub(crate) mod metrics;
pub(crate) mod pool;
pub(crate) mod proxy;
pub(crate) mod proxy_protocol;
pub(crate) mod server;
pub(crate) mod shutdown;
pub(crate) mod tls;
pub(crate) mod upstream;
pub(crate) mod workers;
