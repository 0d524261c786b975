//! The failover loop both forwarding paths share: pick a backend in rotation that this request
//! (or TCP session) has not tried yet, and after a failed try decide whether another may be
//! tried (`retries` per pool). A retry is counted in `lb_retries_total` when another backend is
//! actually picked after a failure, so a try with nothing left to fail over to counts none.

use crate::balance::PickCtx;
use crate::metrics::Metrics;
use crate::pool::Pool;

/// One request's (or session's) way through a pool snapshot.
pub struct Failover<'a> {
    pool: &'a Pool,
    /// consistent_hash's key, `None` for every other strategy.
    key_hash: Option<u64>,
    /// Indices into `pool.backends` already tried, in order.
    tried: Vec<usize>,
    /// Set after a failed try that may be retried; the retry counts once a backend is picked.
    retrying: bool,
    /// Retries so far (for the access log).
    retries: &'a mut usize,
}

impl<'a> Failover<'a> {
    pub fn new(pool: &'a Pool, key_hash: Option<u64>, retries: &'a mut usize) -> Self {
        Failover { pool, key_hash, tried: Vec::new(), retrying: false, retries }
    }

    /// The next backend to try, or `None` when every one in rotation has been tried.
    #[inline]
    pub fn next(&mut self, metrics: &Metrics) -> Option<usize> {
        let index = self.pool.pick(&PickCtx { tried: &self.tried, key_hash: self.key_hash })?;
        if std::mem::take(&mut self.retrying) {
            metrics.retries.with_label_values(&[&*self.pool.name]).inc();
            *self.retries += 1;
        }
        Some(index)
    }

    /// Records a failed try at `index`; true when the pool's `retries` allow another try.
    #[inline]
    pub fn failed(&mut self, index: usize) -> bool {
        self.tried.push(index);
        self.retrying = self.tried.len() <= self.pool.settings.retries as usize;
        self.retrying
    }

    /// Whether any try has failed yet (no try at all means no backend was in rotation).
    pub fn tried_any(&self) -> bool {
        !self.tried.is_empty()
    }

    /// Backends tried and failed so far.
    pub fn failures(&self) -> usize {
        self.tried.len()
    }

    /// Retries so far.
    pub fn retries(&self) -> usize {
        *self.retries
    }
}
