//! Balancing strategies: given a [`Pool`] snapshot, choose a backend.
//!
//! A strategy is built per snapshot by [`build`] (so it can precompute from exactly the set of
//! backends in rotation) and holds only its own cursor or RNG; health, weights and load are read
//! from the snapshot. `pick` never blocks and takes no lock. Failover asks again with the
//! already-tried indices in `tried`, and the strategy walks on from its choice.

mod least_connections;
mod random;
mod round_robin;
mod weighted;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use serde::Deserialize;

use crate::pool::{Backend, Pool};

pub use least_connections::LeastConnections;
pub use random::Random;
pub use round_robin::RoundRobin;
pub use weighted::Weighted;

/// The strategies users name in lb.toml (`strategy = "..."`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StrategyKind {
    RoundRobin,
    Random,
    Weighted,
    LeastConnections,
}

impl StrategyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StrategyKind::RoundRobin => "round_robin",
            StrategyKind::Random => "random",
            StrategyKind::Weighted => "weighted",
            StrategyKind::LeastConnections => "least_connections",
        }
    }
}

impl std::fmt::Display for StrategyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rotation counter shared by successive snapshots of the same pool.
pub type Cursor = Arc<AtomicUsize>;

/// Chooses one backend of a snapshot.
pub trait Strategy: Send + Sync {
    /// Returns an index into `pool.backends` that is in `pool.up` and not in `tried`, or `None`
    /// when every backend in rotation has been tried. `pool.up` is never empty here.
    fn pick(&self, pool: &Pool, tried: &[usize]) -> Option<usize>;
}

/// Builds the strategy for one snapshot: `backends` is the whole pool, `up` the ascending indices
/// in rotation, `cursor` the rotation state carried over from the previous snapshot.
pub fn build(kind: StrategyKind, backends: &[Arc<Backend>], up: &[usize], cursor: Cursor) -> Box<dyn Strategy> {
    match kind {
        StrategyKind::RoundRobin => Box::new(RoundRobin::new(cursor)),
        StrategyKind::Random => Box::new(Random::new()),
        StrategyKind::Weighted => Box::new(Weighted::new(backends, up, cursor)),
        StrategyKind::LeastConnections => Box::new(LeastConnections::new(cursor)),
    }
}
