//! `weighted`: smooth weighted round-robin (nginx's algorithm), precomputed into a schedule.
//!
//! nginx's smooth WRR keeps a `current` value per backend. Each pick adds every backend's weight
//! to its `current`, chooses the largest `current` (the first one on ties) and subtracts the
//! total weight from the chosen one. After `total` picks every `current` is back at zero, so the
//! sequence is periodic with period `total = sum(weights)`, and within one period each backend is
//! chosen exactly `weight` times. The choices are interleaved: weights 5,1,1 give
//! `a a b a c a a`, not `a a a a a b c`; in the first `t` picks of a period no backend is chosen
//! more than `ceil(t · weight / total)` times (its `current` never drops to `-total`).
//!
//! Since the sequence only depends on the weights of the backends in rotation, it is computed
//! once per snapshot (in [`Weighted::new`]) into a schedule of backend indices, and a pick is
//! O(1): `schedule[cursor.fetch_add(1) % len]`. The schedule is cyclic, so *every* run of `len`
//! consecutive picks, not only the aligned ones, holds each backend exactly `weight` times.
//!
//! Keeping the schedule small:
//! - weights are divided by their gcd first (10,20 behaves as 1,2), which changes nothing in the
//!   sequence's proportions or interleaving;
//! - should the reduced total still exceed [`MAX_SCHEDULE_LEN`] (only with thousands of backends
//!   of very different weights), the weights are scaled down proportionally (each at least 1).
//!   The promise then holds for the scaled weights, a rounding error of under one part in a
//!   thousand for weights up to 1000.
//!
//! Building is O(len · distinct weights) rather than nginx's O(len · backends): backends of equal
//! weight take their turns among themselves in index order, so only the next member of each
//! weight group can hold the largest `current` (see [`smooth_schedule`]).
//!
//! Failover (`tried` non-empty) walks forward in the schedule from the chosen position to the
//! next entry not tried, at most one period.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{BackendSet, PickCtx, Strategy};
use crate::backend::Backend;
use crate::backend::Cursor;

/// Upper bound for the schedule's length (4 MiB of `u32`), reached only by extreme pools.
pub const MAX_SCHEDULE_LEN: u64 = 1 << 20;

/// Smooth weighted round-robin over a precomputed schedule.
#[derive(Debug)]
pub struct Weighted {
    /// Backend indices in smooth-WRR order; one period of the sequence.
    schedule: Vec<u32>,
    cursor: Cursor,
}

impl Weighted {
    /// Precomputes the schedule for the backends at the indices in `up`.
    pub fn new(backends: &[Arc<Backend>], up: &[usize], cursor: Cursor) -> Self {
        // Indices beyond u32 (4 billion backends) cannot occur; skipping them avoids a panic path.
        let (indices, mut weights): (Vec<u32>, Vec<u64>) = up
            .iter()
            .filter_map(|&i| Some((u32::try_from(i).ok()?, u64::from(backends.get(i)?.weight.max(1)))))
            .unzip();
        reduce_weights(&mut weights);
        Weighted { schedule: smooth_schedule(&indices, &weights), cursor }
    }
}

impl Strategy for Weighted {
    fn pick(&self, set: &BackendSet<'_>, ctx: &PickCtx<'_>) -> Option<usize> {
        let tried = ctx.tried;
        let len = self.schedule.len();
        if len == 0 {
            return None;
        }
        let start = self.cursor.position.fetch_add(1, Ordering::Relaxed) % len;
        if tried.is_empty() {
            return Some(self.schedule[start] as usize);
        }
        // Fewer tried than up means some up backend is untried (pigeonhole); otherwise check
        // exactly, so that "all tried" answers at once instead of walking a whole period.
        if tried.len() >= set.up.len() && set.up.iter().all(|index| tried.contains(index)) {
            return None;
        }
        let (before, after) = self.schedule.split_at(start);
        after.iter().chain(before).map(|&index| index as usize).find(|index| !tried.contains(index))
    }
}

/// Divides the weights by their gcd and, if their sum still exceeds [`MAX_SCHEDULE_LEN`], scales
/// them down proportionally (each stays at least 1).
fn reduce_weights(weights: &mut [u64]) {
    divide_by_gcd(weights);
    let total: u64 = weights.iter().sum();
    if total > MAX_SCHEDULE_LEN {
        for weight in weights.iter_mut() {
            // weight < 2^32 and the cap is 2^20, so the product cannot overflow.
            *weight = (*weight * MAX_SCHEDULE_LEN / total).max(1);
        }
        divide_by_gcd(weights);
    }
}

fn divide_by_gcd(weights: &mut [u64]) {
    let gcd = weights.iter().fold(0, |acc, &weight| gcd(acc, weight));
    if gcd > 1 {
        weights.iter_mut().for_each(|weight| *weight /= gcd);
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// One period of nginx's smooth WRR over `indices` (ascending) with `weights` (each >= 1).
///
/// After `t` steps a backend chosen `c` times has `current = t·weight − total·c`. Backends of
/// equal weight therefore differ only in `c`, and they are chosen in turn in index order (the
/// one chosen least, lowest index first on ties, exactly nginx's first-maximum rule). So each
/// weight group only needs a count of its picks: its candidate is member `picks % members` with
/// `c = picks / members`. Each step compares one candidate per group, lowest index on ties.
fn smooth_schedule(indices: &[u32], weights: &[u64]) -> Vec<u32> {
    struct Group {
        weight: i64,
        members: Vec<u32>,
        picks: usize,
    }
    let mut by_weight: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    for (&index, &weight) in indices.iter().zip(weights) {
        by_weight.entry(weight).or_default().push(index);
    }
    // Weights are bounded by MAX_SCHEDULE_LEN after `reduce_weights`, so i64 holds every value.
    let to_i64 = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
    let mut groups: Vec<Group> =
        by_weight.into_iter().map(|(weight, members)| Group { weight: to_i64(weight), members, picks: 0 }).collect();
    let total: u64 = weights.iter().sum();
    let capacity = usize::try_from(total).unwrap_or(0);
    let mut schedule = Vec::with_capacity(capacity);
    for step in 1..=to_i64(total) {
        // (current, backend index, group) of the best candidate so far.
        let mut best: Option<(i64, u32, usize)> = None;
        for (group_number, group) in groups.iter().enumerate() {
            let member = group.picks % group.members.len();
            let chosen_before = to_i64((group.picks / group.members.len()) as u64);
            let current = step * group.weight - to_i64(total) * chosen_before;
            let index = group.members[member];
            let better = match best {
                None => true,
                Some((best_current, best_index, _)) => {
                    current > best_current || (current == best_current && index < best_index)
                }
            };
            if better {
                best = Some((current, index, group_number));
            }
        }
        let Some((_, index, group_number)) = best else {
            break;
        };
        schedule.push(index);
        groups[group_number].picks += 1;
    }
    schedule
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::config::StrategyKind;
    use crate::pool::Pool;

    fn pool(weights: &[u32], up: Vec<usize>) -> Pool {
        crate::balance::tests::test_pool(StrategyKind::Weighted, weights, up)
    }

    fn all_up(weights: &[u32]) -> Pool {
        pool(weights, (0..weights.len()).collect())
    }

    fn picks(pool: &Pool, count: usize) -> Vec<usize> {
        (0..count).map(|_| pool.pick(&PickCtx::new(&[])).unwrap()).collect()
    }

    /// nginx's loop, literally: the reference the precomputed schedule must equal.
    fn nginx_reference(weights: &[u64]) -> Vec<u32> {
        let total: i64 = weights.iter().map(|&w| w as i64).sum();
        let mut current = vec![0i64; weights.len()];
        let mut sequence = Vec::new();
        for _ in 0..total {
            let mut best = 0;
            for i in 0..weights.len() {
                current[i] += weights[i] as i64;
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            sequence.push(best as u32);
        }
        sequence
    }

    /// Deterministic pseudo-random weight vectors (xorshift), with many repeated weights so that
    /// the weight groups hold several members.
    fn weight_vectors(count: usize) -> Vec<Vec<u64>> {
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move |bound: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % bound
        };
        (0..count)
            .map(|_| {
                let len = 1 + next(12) as usize;
                let max_weight = 1 + next(20);
                (0..len).map(|_| 1 + next(max_weight)).collect()
            })
            .collect()
    }

    fn count_of(window: &[usize], index: usize) -> usize {
        window.iter().filter(|&&i| i == index).count()
    }

    #[test]
    fn first_picks_are_nginx_smooth_sequence_for_5_1_1() {
        assert_eq!(picks(&all_up(&[5, 1, 1]), 7), [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn schedule_equals_nginx_reference() {
        for weights in weight_vectors(500) {
            let indices: Vec<u32> = (0..weights.len() as u32).collect();
            let mut reduced = weights.clone();
            divide_by_gcd(&mut reduced);
            assert_eq!(smooth_schedule(&indices, &reduced), nginx_reference(&reduced), "{weights:?}");
        }
    }

    #[test]
    fn every_run_of_total_picks_has_exact_weight_counts() {
        let pool = all_up(&[3, 2, 1]);
        let sequence = picks(&pool, 6 * 4);
        // Every window, aligned or not.
        for window in sequence.windows(6) {
            assert_eq!([0, 1, 2].map(|i| count_of(window, i)), [3, 2, 1], "{window:?}");
        }
    }

    #[test]
    fn every_run_of_total_picks_has_exact_weight_counts_for_many_weight_sets() {
        for weights in weight_vectors(200) {
            let weights: Vec<u32> = weights.iter().map(|&w| w as u32).collect();
            let mut reduced: Vec<u64> = weights.iter().map(|&w| u64::from(w)).collect();
            divide_by_gcd(&mut reduced);
            let total = reduced.iter().sum::<u64>() as usize;
            let sequence = picks(&all_up(&weights), total * 3);
            for window in sequence.windows(total) {
                for (index, &weight) in reduced.iter().enumerate() {
                    assert_eq!(count_of(window, index) as u64, weight, "{weights:?}");
                }
            }
        }
    }

    #[test]
    fn never_ahead_of_fair_share_in_any_prefix() {
        // The interleaving promise in its exact form: in the first t picks of a period, backend i
        // appears at most ceil(t * w_i / total) times, so no backend comes in a burst.
        for weights in weight_vectors(200).into_iter().chain([vec![1, 1, 1, 1, 4], vec![5, 1, 1]]) {
            let indices: Vec<u32> = (0..weights.len() as u32).collect();
            let mut reduced = weights.clone();
            divide_by_gcd(&mut reduced);
            let total: u64 = reduced.iter().sum();
            let schedule = smooth_schedule(&indices, &reduced);
            let mut seen = vec![0u64; reduced.len()];
            for (t, &index) in (1u64..).zip(&schedule) {
                seen[index as usize] += 1;
                for (i, &weight) in reduced.iter().enumerate() {
                    assert!(seen[i] <= (t * weight).div_ceil(total), "{weights:?} t={t} i={i}");
                }
            }
        }
    }

    #[test]
    fn heavy_backend_is_interleaved_with_light_ones() {
        let pool = all_up(&[1, 1, 1, 1, 4]);
        let sequence = picks(&pool, 8);
        assert_eq!(sequence, [4, 0, 4, 1, 2, 4, 3, 4]);
        // Within a period the heavy backend never comes twice in a row, and between two of its
        // picks there is exactly one light pick (the light ones take their turns in order).
        assert!(sequence.windows(2).all(|pair| pair != [4, 4]));
        let light: Vec<usize> = sequence.iter().copied().filter(|&i| i != 4).collect();
        assert_eq!(light, [0, 1, 2, 3]);
    }

    #[test]
    fn weights_are_divided_by_their_gcd() {
        let pool = all_up(&[20, 40, 60]);
        let reference = all_up(&[1, 2, 3]);
        assert_eq!(picks(&pool, 12), picks(&reference, 12));
        let mut weights = vec![20, 40, 60];
        reduce_weights(&mut weights);
        assert_eq!(weights, [1, 2, 3]);
    }

    #[test]
    fn huge_weight_sums_are_scaled_to_a_bounded_schedule() {
        // 1500 backends of weight 1000 and 500 of weight 1: gcd 1, total 1,500,500.
        let weights: Vec<u32> = (0..2000).map(|i| if i < 1500 { 1000 } else { 1 }).collect();
        let backends: Vec<Arc<Backend>> =
            weights.iter().map(|&w| Arc::new(Backend::new("b", "127.0.0.1:1".parse().unwrap(), w))).collect();
        let up: Vec<usize> = (0..2000).collect();
        let weighted = Weighted::new(&backends, &up, Cursor::default());
        let len = weighted.schedule.len();
        assert!(len as u64 <= MAX_SCHEDULE_LEN + 2000, "{len}");
        let heavy = weighted.schedule.iter().filter(|&&i| i == 0).count();
        let light = weighted.schedule.iter().filter(|&&i| i == 1999).count();
        assert_eq!(light, 1, "every backend keeps at least weight 1");
        assert_eq!(heavy, 698, "1000 * 2^20 / 1,500,500, rounded down");
        assert!(len == 1500 * 698 + 500);
    }

    #[test]
    fn only_up_backends_are_scheduled() {
        let pool = pool(&[3, 2, 1], vec![0, 2]);
        let sequence = picks(&pool, 4 * 5);
        assert!(!sequence.contains(&1));
        assert_eq!([0, 1, 2].map(|i| count_of(&sequence, i)), [15, 0, 5]);
    }

    #[test]
    fn tried_backends_are_skipped_walking_forward_in_the_schedule() {
        let pool = all_up(&[5, 1, 1]); // schedule [0, 0, 1, 0, 2, 0, 0]
                                       // Position 0 holds 0 (tried); walking on: 0 again, then 1.
        assert_eq!(pool.pick(&PickCtx::new(&[0])), Some(1));
        // Position 1 holds 0; walking on past 1 (tried) and 0 reaches 2 at position 4.
        assert_eq!(pool.pick(&PickCtx::new(&[0, 1])), Some(2));
        // Position 2 holds 1, not tried.
        assert_eq!(pool.pick(&PickCtx::new(&[0, 2])), Some(1));
    }

    #[test]
    fn none_when_every_up_backend_was_tried() {
        let pool = pool(&[5, 1, 1], vec![0, 2]);
        assert_eq!(pool.pick(&PickCtx::new(&[0, 2])), None);
        assert_eq!(pool.pick(&PickCtx::new(&[2, 1, 0])), None);
        assert_eq!(pool.pick(&PickCtx::new(&[0])), Some(2));
    }
}
