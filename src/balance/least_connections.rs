//! `least_connections`: the backend with the fewest requests in flight per unit of weight.
//!
//! Load is `in_flight / weight`, compared without floats: `a` is less loaded than `b` when
//! `in_flight(a) · weight(b) < in_flight(b) · weight(a)`, computed in `u128` so it cannot
//! overflow. A backend of weight 2 with 2 in flight thus ties one of weight 1 with 1 in flight.
//!
//! Pools of up to [`FULL_SCAN_MAX`] backends in rotation are scanned in full, O(n). The scan
//! starts at a rotating offset taken from the shared [`Cursor`] and keeps the first strictly
//! less-loaded backend, so among equally loaded backends the choice rotates (an idle pool is
//! served in turn instead of always by its first backend).
//!
//! Larger pools use power-of-two-choices so the pick stays O(1): two distinct backends are drawn
//! at random and the less loaded one wins (the first drawn on ties, which is random anyway). P2C
//! does not always find the global minimum but keeps the maximum load within a small bound of
//! the optimum, and it avoids the herd effect of many concurrent picks all choosing the same
//! momentarily least-loaded backend. On failover each candidate is drawn and then walks on to the
//! next untried backend; the slight preference for a tried backend's successor is irrelevant next
//! to the load comparison.
//!
//! In-flight counts are read with relaxed loads: they are a moving measure, and a pick racing
//! with a request's start or end is as good as one a moment earlier or later.

use std::sync::atomic::Ordering;

use rand::RngExt;

use super::round_robin::first_untried;
use super::{BackendSet, PickCtx, Strategy};
use crate::backend::Backend;
use crate::backend::Cursor;

/// Pools with more backends in rotation than this use power-of-two-choices.
pub const FULL_SCAN_MAX: usize = 64;

/// Fewest in flight per unit of weight; ties rotate.
#[derive(Debug)]
pub struct LeastConnections {
    cursor: Cursor,
}

impl LeastConnections {
    pub fn new(cursor: Cursor) -> Self {
        LeastConnections { cursor }
    }

    /// O(n): the least-loaded untried backend, scanning from a rotating start.
    fn full_scan(&self, set: &BackendSet<'_>, tried: &[usize]) -> Option<usize> {
        let start = self.cursor.position.fetch_add(1, Ordering::Relaxed) % set.up.len();
        // Two slices instead of `% len` per step: the scan is the whole cost of this pick.
        let (before, after) = set.up.split_at(start);
        let mut best: Option<(usize, Load)> = None;
        for &index in after.iter().chain(before) {
            if tried.contains(&index) {
                continue;
            }
            let load = Load::of(&set.backends[index]);
            // Strictly less: on ties the earlier one in scan order, i.e. the rotating start, wins.
            if best.is_none_or(|(_, best_load)| load.is_less_than(best_load)) {
                best = Some((index, load));
            }
        }
        best.map(|(index, _)| index)
    }

    /// O(1) expected: the less loaded of two distinct random untried backends.
    fn two_choices(set: &BackendSet<'_>, tried: &[usize]) -> Option<usize> {
        let up = &set.up;
        let mut rng = rand::rng();
        // Two distinct positions: the second is drawn from the other n - 1.
        let first_position = rng.random_range(0..up.len());
        let mut second_position = rng.random_range(0..up.len() - 1);
        if second_position >= first_position {
            second_position += 1;
        }
        let first = first_untried(up, first_position, tried)?;
        // Walking on past tried backends may land on `first` again; skip it too.
        let (before, after) = up.split_at(second_position);
        let second = after.iter().chain(before).copied().find(|&index| index != first && !tried.contains(&index));
        let first_load = Load::of(&set.backends[first]);
        match second {
            Some(second) if Load::of(&set.backends[second]).is_less_than(first_load) => Some(second),
            _ => Some(first),
        }
    }
}

impl Strategy for LeastConnections {
    fn pick(&self, set: &BackendSet<'_>, ctx: &PickCtx<'_>) -> Option<usize> {
        let tried = ctx.tried;
        if set.up.is_empty() {
            return None;
        }
        if set.up.len() <= FULL_SCAN_MAX {
            self.full_scan(set, tried)
        } else {
            Self::two_choices(set, tried)
        }
    }
}

/// A backend's load as read once for one pick: in flight and weight, widened so that the
/// cross products below cannot overflow.
#[derive(Debug, Clone, Copy)]
struct Load {
    in_flight: u128,
    weight: u128,
}

impl Load {
    fn of(backend: &Backend) -> Self {
        Load { in_flight: backend.in_flight() as u128, weight: u128::from(backend.weight) }
    }

    /// Strictly less in flight per unit of weight: `a/wa < b/wb` as `a·wb < b·wa`, no floats.
    fn is_less_than(self, other: Load) -> bool {
        self.in_flight * other.weight < other.in_flight * self.weight
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::backend::InFlight;
    use crate::config::StrategyKind;
    use crate::pool::Pool;

    fn pool(weights: &[u32], up: Vec<usize>) -> Pool {
        crate::balance::tests::test_pool(StrategyKind::LeastConnections, weights, up)
    }

    fn all_up(weights: &[u32]) -> Pool {
        pool(weights, (0..weights.len()).collect())
    }

    /// Holds `counts[i]` requests in flight on backend i until the guards drop.
    fn load(pool: &Pool, counts: &[usize]) -> Vec<InFlight> {
        pool.backends.iter().zip(counts).flat_map(|(backend, &count)| (0..count).map(|_| backend.acquire())).collect()
    }

    fn counts(pool: &Pool, picks: usize) -> Vec<usize> {
        let mut counts = vec![0; pool.backends.len()];
        for _ in 0..picks {
            counts[pool.pick(&PickCtx::new(&[])).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn least_loaded_backend_is_chosen() {
        let pool = all_up(&[1, 1, 1, 1]);
        let _guards = load(&pool, &[3, 1, 0, 2]);
        // Whatever the rotating start, backend 2 is the only minimum.
        assert_eq!(counts(&pool, 8), [0, 0, 8, 0]);
    }

    #[test]
    fn ties_rotate() {
        let pool = all_up(&[1, 1, 1, 1]);
        assert_eq!(counts(&pool, 8), [2, 2, 2, 2]);
        let _guards = load(&pool, &[1, 1, 1, 1]);
        assert_eq!(counts(&pool, 8), [2, 2, 2, 2]);
    }

    #[test]
    fn ties_rotate_among_the_least_loaded_only() {
        let pool = all_up(&[1, 1, 1, 1]);
        let _guards = load(&pool, &[0, 5, 0, 5]);
        assert_eq!(counts(&pool, 8), [4, 0, 4, 0]);
    }

    #[test]
    fn load_is_divided_by_weight() {
        let pool = all_up(&[2, 1]);
        // 2 in flight at weight 2 ties 1 in flight at weight 1: the two alternate.
        let _guards = load(&pool, &[2, 1]);
        assert_eq!(counts(&pool, 4), [2, 2]);
        // One more on the light backend tips the balance to the heavy one.
        let _more = pool.backends[1].acquire();
        assert_eq!(counts(&pool, 4), [4, 0]);
    }

    #[test]
    fn in_flight_is_counted_while_guards_live() {
        let pool = all_up(&[1, 1]);
        let guard = load(&pool, &[1, 0]);
        assert_eq!(counts(&pool, 2), [0, 2]);
        drop(guard);
        assert_eq!(counts(&pool, 2), [1, 1]);
    }

    #[test]
    fn only_up_backends_are_chosen() {
        let pool = pool(&[1, 1, 1, 1, 1], vec![1, 3, 4]);
        // The down backends are idle and would otherwise win.
        let _guards = load(&pool, &[0, 2, 0, 2, 2]);
        assert_eq!(counts(&pool, 9), [0, 3, 0, 3, 3]);
    }

    #[test]
    fn tried_backends_are_skipped() {
        let pool = all_up(&[1, 1, 1, 1]);
        let _guards = load(&pool, &[0, 1, 2, 3]);
        assert_eq!(pool.pick(&PickCtx::new(&[0])), Some(1));
        assert_eq!(pool.pick(&PickCtx::new(&[0, 1])), Some(2));
        assert_eq!(pool.pick(&PickCtx::new(&[1, 0, 2])), Some(3));
    }

    #[test]
    fn none_when_every_up_backend_was_tried() {
        let pool = pool(&[1, 1, 1], vec![0, 2]);
        assert_eq!(pool.pick(&PickCtx::new(&[0, 2])), None);
        assert_eq!(pool.pick(&PickCtx::new(&[2, 1, 0])), None);
        assert_eq!(pool.pick(&PickCtx::new(&[0])), Some(2));
    }

    fn large_pool(down: &[usize]) -> Pool {
        let size = 2 * FULL_SCAN_MAX;
        let up = (0..size).filter(|i| !down.contains(i)).collect();
        pool(&vec![1; size], up)
    }

    #[test]
    fn large_pools_use_two_choices_and_never_pick_the_most_loaded() {
        let pool = large_pool(&[]);
        // Every backend busy except that backend 0 is far busier: it can only be chosen if it were
        // drawn twice, which two distinct draws rule out.
        let _guards = load(&pool, &[&[100][..], &[1; 2 * FULL_SCAN_MAX - 1]].concat());
        for _ in 0..10_000 {
            assert_ne!(pool.pick(&PickCtx::new(&[])), Some(0));
        }
    }

    #[test]
    fn large_pools_prefer_less_loaded_backends() {
        let pool = large_pool(&[]);
        // Half the backends carry load 1, half are idle: P2C picks a loaded one only when both
        // draws are loaded, i.e. with probability about 1/4 instead of 1/2.
        let loads: Vec<usize> = (0..pool.backends.len()).map(|i| i % 2).collect();
        let _guards = load(&pool, &loads);
        let counts = counts(&pool, 40_000);
        let loaded: usize = counts.iter().skip(1).step_by(2).sum();
        assert!((8_000..12_000).contains(&loaded), "{loaded} of 40000 on loaded backends");
    }

    #[test]
    fn large_pools_respect_up_and_tried() {
        let down = [0, 5, 70];
        let pool = large_pool(&down);
        let tried = [1, 2, 3, 64, 127];
        for _ in 0..10_000 {
            let index = pool.pick(&PickCtx::new(&tried)).unwrap();
            assert!(!down.contains(&index) && !tried.contains(&index), "{index}");
        }
        let all: Vec<usize> = pool.up.clone();
        assert_eq!(pool.pick(&PickCtx::new(&all)), None);
        // One left untried: it is found whatever the draws.
        let all_but_one: Vec<usize> = all.iter().copied().filter(|&i| i != 99).collect();
        for _ in 0..100 {
            assert_eq!(pool.pick(&PickCtx::new(&all_but_one)), Some(99));
        }
    }
}
