//! The immutable pool snapshot that requests balance over.
//!
//! A [`Pool`] is built once per change (config load, reload, health transition) and published
//! behind an `ArcSwap` ([`PoolHandle`]). A request loads it once and sees one consistent world.
//! Per-request counters (in flight, the latency estimate of `least_time`) are atomics on the
//! `Arc<Backend>` the snapshots share (see `crate::backend`), so a backend kept across snapshots
//! keeps its state.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use crate::backend::Down;
use crate::backend::{Backend, Cursor, InFlight};
use crate::balance::{self, BackendSet, PickCtx, Strategy};
use crate::config::{defaults, PoolConfig, ProxyVersion, StrategyKind};
use crate::tls::UpstreamTls;

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
    /// Builds a snapshot of a pool from its configuration. Backends that `prev` already has (same
    /// address) are carried over with their state; new ones start in rotation.
    pub fn build(name: &str, cfg: &PoolConfig, prev: Option<&Pool>) -> Pool {
        let backends: Vec<Arc<Backend>> = cfg
            .backends
            .iter()
            .map(|b| {
                // TLS settings are built per load (the pool's client config is shared by its backends).
                let tls =
                    b.tls.clone().zip(cfg.tls.as_ref()).map(|(name, client)| Arc::new(UpstreamTls::new(client, name)));
                match prev.and_then(|p| p.backends.iter().find(|o| o.addr == b.addr)) {
                    Some(old)
                        if old.name == b.name && old.weight == b.weight && tls.is_none() && old.tls().is_none() =>
                    {
                        old.clone()
                    }
                    // Renamed or reweighted: the same backend, its health and in-flight count kept.
                    Some(old) => Arc::new(old.reconfigured(&b.name, b.weight).with_tls(tls)),
                    None => Arc::new(Backend::new(b.name.clone(), b.addr, b.weight).with_tls(tls)),
                }
            })
            .collect();
        // A kept backend whose TLS settings changed drops its idle connections of the old kind.
        for b in &backends {
            b.conns().set_transport(b.transport_id());
        }
        let settings = Arc::new(PoolSettings {
            connect_timeout: cfg.connect_timeout,
            request_timeout: cfg.request_timeout,
            retries: cfg.retries,
            fall: cfg.health.as_ref().map_or(defaults::HEALTH_FALL, |h| h.fall),
            send_proxy: cfg.send_proxy,
            // The publisher listens on this; it must outlive snapshots.
            events: prev.map(|p| p.settings.events.clone()).unwrap_or_default(),
        });
        // Kept backends keep their health; new ones start up.
        let up = up_from_health(&backends);
        // Keep the rotation going when the strategy stays; start afresh when it changes.
        let cursor = match prev {
            Some(p) if p.kind == cfg.strategy => p.cursor.clone(),
            _ => Default::default(),
        };
        Pool::new(Arc::from(name), backends, up, cfg.strategy, settings, cursor)
    }

    /// Records a live-traffic failure of `backend` (connect failure, reset, timeout); wakes the
    /// pool's health publisher when it changes why the backend is out.
    pub fn passive_failure(&self, backend: &Backend, why: &str) {
        if let Some(change) = backend.health().record_live_failure(self.settings.fall) {
            if change.went_down() {
                tracing::warn!(pool = %self.name, backend = %backend.name, reason = why, "backend DOWN (live traffic)");
            }
            self.settings.events.notify_one();
        }
    }

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
        self.strategy.pick(&BackendSet { backends: &self.backends, up: &self.up }, ctx)
    }

    /// Counts one request (http) or session (tcp) in flight on `backends[index]` until the
    /// guard drops. For `consistent_hash` with `hash_balance_factor` it is also counted in the
    /// pool-wide total that the load bound compares against; the guard keeps that counter
    /// alive, so a request started on an older snapshot is subtracted from the right one.
    pub fn acquire(&self, index: usize) -> InFlight {
        let mut guard = self.backends[index].acquire();
        if self.counts_pool_in_flight {
            guard.count_in_pool(self.cursor.clone());
        }
        guard
    }
}

/// The `up` set of a snapshot, and whether it is the fallback: the backends nothing holds out;
/// when there is none, those out by live-traffic failures alone. Passive marks never leave a
/// pool with nothing to try (nginx never marks its last server down; Envoy has its panic
/// threshold), while a failed active check is a verdict that keeps a backend out.
pub(crate) fn rotation(backends: &[Arc<Backend>]) -> (Vec<usize>, bool) {
    // One read per backend, so both passes see the same states.
    let states: Vec<Down> = backends.iter().map(|b| b.health().down()).collect();
    let up: Vec<usize> = (0..states.len()).filter(|&i| states[i].is_up()).collect();
    if !up.is_empty() {
        return (up, false);
    }
    ((0..states.len()).filter(|&i| states[i].by_traffic_only()).collect(), true)
}

/// The `up` set of a snapshot, read from the backends' health atomics (see [`rotation`]).
pub fn up_from_health(backends: &[Arc<Backend>]) -> Vec<usize> {
    rotation(backends).0
}

/// The published, swappable current snapshot of one pool.
pub type PoolHandle = Arc<ArcSwap<Pool>>;

/// Which pool a listener balances over; swappable so a reload can re-point a listener.
pub type Route = Arc<ArcSwap<ArcSwap<Pool>>>;
