//! Backends and the immutable pool snapshot that requests balance over.
//!
//! A [`Pool`] is built once per change (config load, reload, health transition) and published
//! behind an `ArcSwap` ([`PoolHandle`]). A request loads it once and sees one consistent world.
//! Per-request counters (in flight, the latency estimate of `least_time`) are atomics on the
//! `Arc<Backend>` the snapshots share, so a backend kept across snapshots keeps its state.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use crate::balance::{self, Cursor, LatencyEstimate, PickCtx, Strategy};
use crate::config::{defaults, ProxyVersion, StrategyKind};
use crate::health::HealthState;
use crate::metrics::BackendMetrics;
use crate::tls::UpstreamTls;
use crate::upstream::ConnPool;

/// One upstream server. Shared (`Arc`) by every snapshot that contains it.
#[derive(Debug)]
pub struct Backend {
    /// Label used in logs and metrics; defaults to the configured address string.
    pub name: String,
    pub addr: SocketAddr,
    /// Relative share for `weighted` and `least_connections`; always >= 1.
    pub weight: u32,
    /// How the backend is reached over TLS; `None` for plain TCP.
    tls: Option<Arc<UpstreamTls>>,
    /// Everything that changes while the backend lives; shared with a reconfigured copy.
    state: Arc<BackendState>,
}

/// The mutable side of a backend, kept across reloads as long as the backend is kept.
#[derive(Debug, Default)]
pub struct BackendState {
    in_flight: AtomicUsize,
    /// Idle keep-alive connections to this backend.
    pub conns: ConnPool,
    /// Up/down and the rise/fall counters.
    pub health: HealthState,
    /// This backend's metric series (kept across reloads, gone with the backend).
    pub metrics: BackendMetrics,
    /// Peak-EWMA response time for `least_time`, fed by the proxies (atomics, no lock).
    pub latency: LatencyEstimate,
}

impl Backend {
    pub fn new(name: impl Into<String>, addr: SocketAddr, weight: u32) -> Self {
        Backend { name: name.into(), addr, weight: weight.max(1), tls: None, state: Arc::default() }
    }

    /// The same backend (same counters, connections and health) under a new name and weight:
    /// a reload that keeps its address keeps what it knows of it.
    pub fn reconfigured(&self, name: &str, weight: u32) -> Self {
        Backend {
            name: name.to_owned(),
            addr: self.addr,
            weight: weight.max(1),
            tls: self.tls.clone(),
            state: self.state.clone(),
        }
    }

    /// This backend reached over TLS (`Some`) or plain TCP (`None`).
    pub fn with_tls(mut self, tls: Option<Arc<UpstreamTls>>) -> Self {
        self.tls = tls;
        self
    }

    /// TLS settings of this backend, `None` for plain TCP.
    pub fn tls(&self) -> Option<&UpstreamTls> {
        self.tls.as_deref()
    }

    /// Which kind of connection this backend's idle connections must be: 0 for plain TCP,
    /// else its TLS settings' id (see [`ConnPool::set_transport`]).
    pub fn transport_id(&self) -> u64 {
        self.tls.as_ref().map_or(0, |t| t.id())
    }

    /// True when both share their state (one is a reconfigured copy of the other).
    pub fn same_state(&self, other: &Backend) -> bool {
        Arc::ptr_eq(&self.state, &other.state)
    }

    /// Requests (http) or sessions (tcp) currently being served by this backend.
    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::Relaxed)
    }

    /// Idle keep-alive connections to this backend.
    pub fn conns(&self) -> &ConnPool {
        &self.state.conns
    }

    /// Health state, shared by every snapshot and kept across reloads.
    pub fn health(&self) -> &HealthState {
        &self.state.health
    }

    /// Metric series of this backend.
    pub fn metrics(&self) -> &BackendMetrics {
        &self.state.metrics
    }

    /// Response-time estimate (`least_time`), shared by every snapshot and kept across reloads.
    pub fn latency(&self) -> &LatencyEstimate {
        &self.state.latency
    }

    /// Counts one request in flight until the returned guard drops. The proxies go through
    /// [`Pool::acquire`], which also keeps the pool-wide count when the strategy needs it.
    pub fn acquire(self: &Arc<Self>) -> InFlight {
        self.state.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight { backend: self.clone(), pool: None }
    }
}

/// Guard for one in-flight request; decrements the backend's count when dropped, which for a
/// streamed response is when the last body byte has been passed on (or the client went away).
#[derive(Debug)]
pub struct InFlight {
    backend: Arc<Backend>,
    /// The pool-wide count this request is also counted in (see [`Pool::acquire`]).
    pool: Option<Cursor>,
}

impl InFlight {
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.backend.state.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(cursor) = &self.pool {
            cursor.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Per-pool settings that do not change per request.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// How many *other* backends a failed request may be tried on.
    pub retries: u32,
    /// Consecutive failures (probes or live traffic) that take a backend out of rotation.
    pub fall: u32,
    /// PROXY protocol header written to backends before a tcp session's bytes.
    pub send_proxy: Option<ProxyVersion>,
    /// Wakes the pool's health publisher when live traffic took a backend out. Shared by every
    /// snapshot of the pool.
    pub events: Arc<Notify>,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            connect_timeout: defaults::CONNECT_TIMEOUT,
            request_timeout: defaults::REQUEST_TIMEOUT,
            retries: defaults::RETRIES,
            fall: defaults::HEALTH_FALL,
            send_proxy: None,
            events: Arc::default(),
        }
    }
}

/// An immutable view of one pool: its backends, which of them are in rotation, and the strategy
/// state prepared for exactly this set.
pub struct Pool {
    pub name: Arc<str>,
    /// Every configured backend, in config order. Strategies return indices into this.
    pub backends: Vec<Arc<Backend>>,
    /// Indices (into `backends`) of the backends in rotation, ascending.
    pub up: Vec<usize>,
    pub kind: StrategyKind,
    pub settings: Arc<PoolSettings>,
    /// Rotation position (and, for a load-bounded `consistent_hash`, the pool-wide in-flight
    /// count) shared by every snapshot of this pool with this strategy, so that a health flip
    /// does not restart the rotation.
    pub cursor: Cursor,
    strategy: Box<dyn Strategy>,
    /// Whether [`Pool::acquire`] keeps `cursor.in_flight`: only `consistent_hash` with
    /// `hash_balance_factor` reads it, so no other pool pays for the shared counter.
    counts_pool_in_flight: bool,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.name)
            .field("backends", &self.backends)
            .field("up", &self.up)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// Builds a snapshot. `up` lists the indices in rotation (ascending, deduplicated).
    pub fn new(
        name: Arc<str>,
        backends: Vec<Arc<Backend>>,
        up: Vec<usize>,
        kind: StrategyKind,
        settings: Arc<PoolSettings>,
        cursor: Cursor,
    ) -> Self {
        debug_assert!(up.windows(2).all(|w| w[0] < w[1]) && up.iter().all(|&i| i < backends.len()));
        let strategy = balance::build(kind, &backends, &up, cursor.clone());
        let counts_pool_in_flight =
            matches!(kind, StrategyKind::ConsistentHash(options) if options.balance_factor.is_some());
        Pool { name, backends, up, kind, settings, cursor, strategy, counts_pool_in_flight }
    }

    /// A snapshot with every backend in rotation.
    pub fn all_up(
        name: Arc<str>,
        backends: Vec<Arc<Backend>>,
        kind: StrategyKind,
        settings: Arc<PoolSettings>,
    ) -> Self {
        let up = (0..backends.len()).collect();
        Pool::new(name, backends, up, kind, settings, Cursor::default())
    }

    /// The same pool with a different set of backends in rotation (after a health change).
    pub fn with_up(&self, up: Vec<usize>) -> Pool {
        Pool::new(self.name.clone(), self.backends.clone(), up, self.kind, self.settings.clone(), self.cursor.clone())
    }

    /// Chooses a backend in rotation that is not in `ctx.tried`; `None` when none is left.
    pub fn pick(&self, ctx: &PickCtx<'_>) -> Option<usize> {
        if self.up.is_empty() {
            return None;
        }
        self.strategy.pick(self, ctx)
    }

    /// Counts one request (http) or session (tcp) in flight on `backends[index]` until the
    /// guard drops. For `consistent_hash` with `hash_balance_factor` it is also counted in the
    /// pool-wide total that the load bound compares against; the guard keeps that counter
    /// alive, so a request started on an older snapshot is subtracted from the right one.
    pub fn acquire(&self, index: usize) -> InFlight {
        let mut guard = self.backends[index].acquire();
        if self.counts_pool_in_flight {
            self.cursor.in_flight.fetch_add(1, Ordering::Relaxed);
            guard.pool = Some(self.cursor.clone());
        }
        guard
    }
}

/// The published, swappable current snapshot of one pool.
pub type PoolHandle = Arc<ArcSwap<Pool>>;

/// Which pool a listener balances over; swappable so a reload can re-point a listener.
pub type Route = Arc<ArcSwap<ArcSwap<Pool>>>;
