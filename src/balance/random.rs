//! `random`: a uniform choice among the backends in rotation that were not tried yet.
//!
//! Uses the thread-local RNG (`rand::rng()`): no shared state between threads, no lock and no
//! allocation per pick. Without failover one random index into `set.up` is drawn. With `tried`,
//! the candidates left are counted and the k-th of them is taken for a uniform k, which keeps the
//! choice exactly uniform over the untried backends (walking on from a random start would favour
//! the backend right after a tried one). That path is O(up · tried), taken only on failover.

use rand::RngExt;

use super::{BackendSet, PickCtx, Strategy};

/// Uniform random choice; holds no state of its own.
#[derive(Debug, Default)]
pub struct Random;

impl Random {
    pub fn new() -> Self {
        Random
    }
}

impl Strategy for Random {
    fn pick(&self, set: &BackendSet<'_>, ctx: &PickCtx<'_>) -> Option<usize> {
        let tried = ctx.tried;
        let up = &set.up;
        if up.is_empty() {
            return None;
        }
        let mut rng = rand::rng();
        if tried.is_empty() {
            return Some(up[rng.random_range(0..up.len())]);
        }
        let untried = || up.iter().copied().filter(|index| !tried.contains(index));
        let left = untried().count();
        if left == 0 {
            return None;
        }
        untried().nth(rng.random_range(0..left))
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::config::StrategyKind;
    use crate::pool::Pool;

    fn pool(size: usize, up: Vec<usize>) -> Pool {
        let weights: Vec<u32> = (1..=size as u32).collect();
        crate::balance::tests::test_pool(StrategyKind::Random, &weights, up)
    }

    fn counts(pool: &Pool, tried: &[usize], picks: usize) -> Vec<usize> {
        let mut counts = vec![0; pool.backends.len()];
        for _ in 0..picks {
            counts[pool.pick(&PickCtx::new(tried)).unwrap()] += 1;
        }
        counts
    }

    /// Each count within ±5% of its expectation. At 100k picks over 4 backends the standard
    /// deviation of one count is ~137, so 5% (1250) is ~9 sigma: this never flakes, yet a biased
    /// choice (even one backend at 30% instead of 25%) fails.
    fn assert_uniform(counts: &[usize], chosen: &[usize], picks: usize) {
        let expected = picks as f64 / chosen.len() as f64;
        for (index, &count) in counts.iter().enumerate() {
            if chosen.contains(&index) {
                let deviation = (count as f64 - expected).abs() / expected;
                assert!(deviation < 0.05, "backend {index}: {count} vs {expected} ({counts:?})");
            } else {
                assert_eq!(count, 0, "backend {index} must never be chosen ({counts:?})");
            }
        }
    }

    #[test]
    fn uniform_over_up_backends_ignoring_weights() {
        let pool = pool(4, vec![0, 1, 2, 3]);
        assert_uniform(&counts(&pool, &[], 100_000), &[0, 1, 2, 3], 100_000);
    }

    #[test]
    fn only_up_backends_are_chosen() {
        let pool = pool(6, vec![0, 2, 3, 5]);
        assert_uniform(&counts(&pool, &[], 100_000), &[0, 2, 3, 5], 100_000);
    }

    #[test]
    fn uniform_over_untried_backends() {
        let pool = pool(6, vec![0, 1, 2, 3, 4, 5]);
        // The backend right after a tried one gets no extra share.
        assert_uniform(&counts(&pool, &[1, 2], 100_000), &[0, 3, 4, 5], 100_000);
    }

    #[test]
    fn tried_backends_are_never_chosen() {
        let pool = pool(3, vec![0, 1, 2]);
        for _ in 0..1000 {
            assert_eq!(pool.pick(&PickCtx::new(&[0, 2])), Some(1));
        }
    }

    #[test]
    fn none_when_every_up_backend_was_tried() {
        let pool = pool(4, vec![1, 3]);
        assert_eq!(pool.pick(&PickCtx::new(&[3, 1])), None);
        assert_eq!(pool.pick(&PickCtx::new(&[0, 1, 2, 3])), None);
    }
}
