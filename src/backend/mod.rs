//! Backends and their state: one upstream server ([`Backend`]: address, weight, TLS) and what
//! changes while it lives ([`BackendState`]: in-flight count, idle connections, health, metric
//! series, latency estimate), shared by every pool snapshot that holds it and kept across
//! reloads while the backend is kept. Also the pool-wide counters successive snapshots share
//! ([`CursorState`]), which the in-flight guard counts in.
//!
//! Everything here is atomics: the request path reads and counts without a lock.

pub mod health;
pub mod latency;
pub mod metrics;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub use health::{CheckResult, Down, HealthState};
pub use latency::{LatencyEstimate, TryTimer};
pub use metrics::BackendMetrics;

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
    /// `Pool::acquire`, which also keeps the pool-wide count when the strategy needs it.
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
    /// The pool-wide count this request is also counted in (see `Pool::acquire`).
    pool: Option<Cursor>,
}

impl InFlight {
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }

    /// Counts this request in the pool-wide total of `cursor` too, until the guard drops.
    pub fn count_in_pool(&mut self, cursor: Cursor) {
        cursor.in_flight.fetch_add(1, Ordering::Relaxed);
        self.pool = Some(cursor);
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

/// State shared by successive snapshots of the same pool (as long as its strategy stays).
#[derive(Debug, Default)]
pub struct CursorState {
    /// Rotation position: round_robin's turn, weighted's place in its schedule, the rotating
    /// start of least_connections' and least_time's scans.
    pub position: AtomicUsize,
    /// Requests (http) or sessions (tcp) in flight in the whole pool. Counted only for
    /// `consistent_hash` with `hash_balance_factor`, whose load bound compares a backend with
    /// the pool's average (see `Pool::acquire`); zero otherwise.
    pub in_flight: AtomicUsize,
}

/// Rotation and load state shared by successive snapshots of the same pool.
pub type Cursor = Arc<CursorState>;
