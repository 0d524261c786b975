//! `round_robin`: strict rotation over the backends in rotation, weights ignored.
//!
//! Every pick takes the next position of the pool's shared [`Cursor`] (`fetch_add`, relaxed: the
//! counter only has to hand out distinct positions, it orders nothing else) and maps it onto
//! `set.up`. Hence the promise: over k·N picks each of k backends gets N ± 1, exactly N when the
//! cursor starts fresh; concurrent requests simply take consecutive positions.
//!
//! Failover (`tried` non-empty) also takes a position and then walks on from it to the next
//! backend not yet tried. A retry therefore counts as one turn of the rotation, so the rotation
//! stays even over the requests the backends actually receive.
//!
//! The cursor outlives snapshots: after a health flip the rotation continues instead of
//! restarting at the first backend (which would overload it under frequent flips).

use std::sync::atomic::Ordering;

use super::{BackendSet, PickCtx, Strategy};
use crate::backend::Cursor;

/// Strict rotation over `set.up`.
#[derive(Debug)]
pub struct RoundRobin {
    cursor: Cursor,
}

impl RoundRobin {
    pub fn new(cursor: Cursor) -> Self {
        RoundRobin { cursor }
    }
}

impl Strategy for RoundRobin {
    fn pick(&self, set: &BackendSet<'_>, ctx: &PickCtx<'_>) -> Option<usize> {
        let tried = ctx.tried;
        let position = self.cursor.position.fetch_add(1, Ordering::Relaxed);
        first_untried(set.up, position, tried)
    }
}

/// The first entry of `candidates`, starting at `start % len` and wrapping around, that is not in
/// `tried`; `None` when every candidate was tried. Shared by the strategies that walk on from a
/// chosen position.
///
/// `tried` is tiny (one entry per failed attempt), so a linear `contains` beats any set.
pub(super) fn first_untried(candidates: &[usize], start: usize, tried: &[usize]) -> Option<usize> {
    if candidates.is_empty() {
        return None;
    }
    let (before, after) = candidates.split_at(start % candidates.len());
    after.iter().chain(before).copied().find(|index| !tried.contains(index))
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::config::StrategyKind;
    use crate::pool::Pool;

    fn pool(weights: &[u32], up: Vec<usize>) -> Pool {
        crate::balance::tests::test_pool(StrategyKind::RoundRobin, weights, up)
    }

    fn counts(pool: &Pool, picks: usize) -> Vec<usize> {
        let mut counts = vec![0; pool.backends.len()];
        for _ in 0..picks {
            counts[pool.pick(&PickCtx::new(&[])).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn strict_rotation_in_order() {
        let pool = pool(&[1, 1, 1], vec![0, 1, 2]);
        let picks: Vec<usize> = (0..7).map(|_| pool.pick(&PickCtx::new(&[])).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn exactly_n_each_over_k_times_n_picks_ignoring_weights() {
        let pool = pool(&[1, 5, 3, 1], vec![0, 1, 2, 3]);
        assert_eq!(counts(&pool, 4 * 250), [250, 250, 250, 250]);
    }

    #[test]
    fn n_plus_minus_one_from_any_cursor_position() {
        let pool = pool(&[1, 1, 1], vec![0, 1, 2]);
        pool.cursor.position.store(usize::MAX - 4, Ordering::Relaxed); // also crosses the wrap-around
        for _ in 0..3 {
            let counts = counts(&pool, 3 * 100);
            assert!(counts.iter().all(|&c| (99..=101).contains(&c)), "{counts:?}");
        }
    }

    #[test]
    fn only_up_backends_are_chosen() {
        let pool = pool(&[1, 1, 1, 1, 1], vec![0, 2, 4]);
        assert_eq!(counts(&pool, 3 * 10), [10, 0, 10, 0, 10]);
    }

    #[test]
    fn tried_backends_are_skipped_walking_on() {
        let pool = pool(&[1, 1, 1, 1], vec![0, 1, 2, 3]);
        // Cursor at 0 chooses backend 0; it was tried, so walk on to 1.
        assert_eq!(pool.pick(&PickCtx::new(&[0])), Some(1));
        // Cursor at 1 chooses 1; 1 and 2 tried, so walk on to 3.
        assert_eq!(pool.pick(&PickCtx::new(&[1, 2])), Some(3));
        // Cursor at 2 chooses 2; 2 and 3 tried, so wrap around to 0.
        assert_eq!(pool.pick(&PickCtx::new(&[2, 3])), Some(0));
    }

    #[test]
    fn none_when_every_up_backend_was_tried() {
        let pool = pool(&[1, 1, 1], vec![0, 2]);
        assert_eq!(pool.pick(&PickCtx::new(&[0, 2])), None);
        assert_eq!(pool.pick(&PickCtx::new(&[2, 0, 1])), None);
        assert_eq!(pool.pick(&PickCtx::new(&[0])), Some(2));
    }

    #[test]
    fn rotation_continues_across_snapshots_sharing_the_cursor() {
        let first = pool(&[1, 1, 1], vec![0, 1, 2]);
        assert_eq!(first.pick(&PickCtx::new(&[])), Some(0));
        let second = Pool::new(
            "test".into(),
            first.backends.clone(),
            vec![0, 1, 2],
            StrategyKind::RoundRobin,
            first.settings.clone(),
            first.cursor.clone(),
        );
        assert_eq!(second.pick(&PickCtx::new(&[])), Some(1));
    }
}
