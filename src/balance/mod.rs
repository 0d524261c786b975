//! Balancing strategies: given a pool snapshot's backends and which of them are in rotation
//! ([`BackendSet`]), choose one.
//!
//! A strategy is built per snapshot by [`build`] (so it can precompute from exactly the set of
//! backends in rotation) and holds only its own cursor, RNG or precomputed table; health,
//! weights, load and latency are read from the backends it is handed (as pingora's
//! `BackendSelection` is built over the backend set alone). `pick` never blocks and
//! takes no lock. What a strategy may know about the request is in [`PickCtx`]: the backends
//! already tried (failover asks again and the strategy walks on from its choice) and, for
//! `consistent_hash`, the hash of the request's key.

mod consistent_hash;
mod least_connections;
mod least_time;
mod random;
mod round_robin;
mod weighted;

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, Uri};

use crate::backend::{Backend, Cursor};
use crate::config::StrategyKind;

pub use consistent_hash::{hash_bytes, hash_ip, ConsistentHash};
pub use least_connections::LeastConnections;
pub use least_time::LeastTime;
pub use random::Random;
pub use round_robin::RoundRobin;
pub use weighted::Weighted;

/// The strategies' request keys, computed on the request path.
impl StrategyKind {
    /// The hash of an HTTP request's key for `consistent_hash` (its `hash_key`, or the client IP
    /// when the request has no such key); `None`, without looking at the request, for every
    /// other strategy.
    pub fn request_key_hash(self, headers: &HeaderMap, uri: &Uri, client: IpAddr) -> Option<u64> {
        match self {
            StrategyKind::ConsistentHash(options) => Some(options.key.hash_request(headers, uri, client)),
            _ => None,
        }
    }

    /// The hash of a TCP session's key for `consistent_hash`: always the client IP (a byte
    /// stream has no headers, cookies or URI); `None` for every other strategy.
    pub fn connection_key_hash(self, client: IpAddr) -> Option<u64> {
        match self {
            StrategyKind::ConsistentHash(_) => Some(hash_ip(client)),
            _ => None,
        }
    }
}

/// What a strategy picks from: every backend of a snapshot (strategies return indices into
/// `backends`) and the ascending indices of those in rotation.
#[derive(Debug, Clone, Copy)]
pub struct BackendSet<'a> {
    pub backends: &'a [Arc<Backend>],
    pub up: &'a [usize],
}

/// What a strategy knows about the request (or TCP session) it picks for.
#[derive(Debug, Clone, Copy, Default)]
pub struct PickCtx<'a> {
    /// Indices (into `set.backends`) already tried for this request, in order; empty on the
    /// first try. Tiny, so a linear `contains` beats any set.
    pub tried: &'a [usize],
    /// Hash of the request's key; `Some` only for `consistent_hash` (see
    /// [`StrategyKind::request_key_hash`]), so no other strategy pays for computing it.
    pub key_hash: Option<u64>,
}

impl<'a> PickCtx<'a> {
    /// A context without a key.
    pub fn new(tried: &'a [usize]) -> Self {
        PickCtx { tried, key_hash: None }
    }

    /// The same context with the request's key hash.
    pub fn with_key(self, key_hash: u64) -> Self {
        PickCtx { key_hash: Some(key_hash), ..self }
    }
}

/// Chooses one backend of a snapshot.
pub trait Strategy: Send + Sync {
    /// Returns an index into `set.backends` that is in `set.up` and not in `ctx.tried`, or
    /// `None` when every backend in rotation has been tried. `set.up` is never empty here.
    fn pick(&self, set: &BackendSet<'_>, ctx: &PickCtx<'_>) -> Option<usize>;
}

/// Builds the strategy for one snapshot: `backends` is the whole pool, `up` the ascending indices
/// in rotation, `cursor` the rotation state carried over from the previous snapshot.
pub fn build(kind: StrategyKind, backends: &[Arc<Backend>], up: &[usize], cursor: Cursor) -> Box<dyn Strategy> {
    match kind {
        StrategyKind::RoundRobin => Box::new(RoundRobin::new(cursor)),
        StrategyKind::Random => Box::new(Random::new()),
        StrategyKind::Weighted => Box::new(Weighted::new(backends, up, cursor)),
        StrategyKind::LeastConnections => Box::new(LeastConnections::new(cursor)),
        StrategyKind::ConsistentHash(options) => Box::new(ConsistentHash::new(backends, up, options, cursor)),
        StrategyKind::LeastTime => Box::new(LeastTime::new(backends, cursor)),
    }
}

/// What the strategies' unit tests share (`pub(crate)` so that each strategy's tests use it).
#[cfg(test)]
mod tests {
    use super::*;

    /// A pool of test backends `b0, b1, ...` on 127.0.0.1:1 with the given weights; `up` lists
    /// the indices in rotation. Shared by the strategies' unit tests.
    pub(crate) fn test_pool(kind: StrategyKind, weights: &[u32], up: Vec<usize>) -> crate::pool::Pool {
        use crate::pool::{Pool, PoolSettings};
        let backends = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Arc::new(Backend::new(format!("b{i}"), "127.0.0.1:1".parse().expect("literal address"), w)))
            .collect();
        let settings = PoolSettings {
            connect_timeout: std::time::Duration::from_secs(1),
            request_timeout: std::time::Duration::from_secs(1),
            retries: 2,
            ..Default::default()
        };
        Pool::new("test".into(), backends, up, kind, Arc::new(settings), Cursor::default())
    }
}
