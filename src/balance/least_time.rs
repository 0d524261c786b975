//! `least_time`: the backend expected to answer soonest, from a peak-EWMA latency estimate per
//! backend combined with its requests in flight.
//!
//! # The estimate
//!
//! Each backend's [`crate::backend::latency::LatencyEstimate`] (a peak EWMA, see there), fed by
//! the proxies; a failed try counts as a try as slow as the pool's timeout.
//!
//! # The pick
//!
//! The cost of a backend is `estimate × (in_flight + 1) / weight` (the `+ 1` is the request
//! being placed): in-flight requests are what the estimate does not know yet, so a fast backend
//! takes more concurrent requests than a slow one but not all of them. A backend without any
//! sample yet (at startup, or added by a reload) is costed with the best estimate among the
//! candidates, so it gets a share at once without drawing every request before its first
//! answer; among several unsampled ones the fewest in flight wins.
//!
//! Pools of up to [`FULL_SCAN_MAX`] (16) backends in rotation are scanned in full (ties rotate,
//! from the shared cursor): with a handful of backends, power-of-two-choices would cap the
//! fastest at the `2/n` of picks in which it is drawn (two thirds of three backends) however
//! fast it is. Larger pools use power-of-two-choices, O(1): two distinct random untried
//! backends, the cheaper wins; it keeps close to the optimum and avoids the herd effect of every
//! concurrent pick choosing the same momentary minimum. The limit is lower than
//! `least_connections`' 64 because a candidate costs a little more here (two atomics, a table
//! lookup), and a scan of 16 already takes ~90 ns.
//!
//! Costs are compared in the log domain so that a pick reads no clock and computes no
//! exponential: the estimate is stored as `ln(estimate) + t/τ`, `t` being the time of the last
//! update. Decayed to any common instant `now`, every backend's estimate is
//! `exp(stored − now/τ)`; `now` cancels out of every comparison, and so does the decay.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use rand::RngExt;

use super::round_robin::first_untried;
use super::{BackendSet, PickCtx, Strategy};
use crate::backend::Backend;
use crate::backend::Cursor;

/// Pools with more backends in rotation than this use power-of-two-choices.
pub const FULL_SCAN_MAX: usize = 16;

/// In-flight counts below this have their `ln(in_flight + 1)` looked up rather than computed.
const LN_TABLE: usize = 64;

/// Least expected time: peak-EWMA × (in flight + 1) / weight.
#[derive(Debug)]
pub struct LeastTime {
    cursor: Cursor,
    /// `ln(weight)` per index into `set.backends`.
    log_weight: Vec<f64>,
    /// `ln(in_flight + 1)` for small counts: a logarithm per candidate would double the cost
    /// of a scan.
    ln_queue: [f64; LN_TABLE],
}

impl LeastTime {
    pub fn new(backends: &[Arc<Backend>], cursor: Cursor) -> Self {
        LeastTime {
            cursor,
            log_weight: backends.iter().map(|b| f64::from(b.weight.max(1)).ln()).collect(),
            ln_queue: std::array::from_fn(|in_flight| (in_flight as f64).ln_1p()),
        }
    }

    fn candidate(&self, set: &BackendSet<'_>, index: usize) -> Candidate {
        let backend = &set.backends[index];
        let in_flight = backend.in_flight();
        let queue = self.ln_queue.get(in_flight).copied().unwrap_or_else(|| (in_flight as f64).ln_1p());
        Candidate {
            index,
            log_estimate: backend.latency().log_cost(),
            load: queue - self.log_weight.get(index).copied().unwrap_or(0.0),
        }
    }

    /// O(n): the cheapest untried backend, scanning from a rotating start.
    fn full_scan(&self, set: &BackendSet<'_>, tried: &[usize]) -> Option<usize> {
        let start = self.cursor.position.fetch_add(1, Ordering::Relaxed) % set.up.len();
        let (before, after) = set.up.split_at(start);
        let mut choice = Choice::default();
        for &index in after.iter().chain(before) {
            if !tried.contains(&index) {
                choice.offer(self.candidate(set, index));
            }
        }
        choice.best()
    }

    /// O(1) expected: the cheaper of two distinct random untried backends.
    fn two_choices(&self, set: &BackendSet<'_>, tried: &[usize]) -> Option<usize> {
        let up = &set.up;
        let mut rng = rand::rng();
        let first_position = rng.random_range(0..up.len());
        let mut second_position = rng.random_range(0..up.len() - 1);
        if second_position >= first_position {
            second_position += 1;
        }
        let first = first_untried(up, first_position, tried)?;
        let (before, after) = up.split_at(second_position);
        let second = after.iter().chain(before).copied().find(|&index| index != first && !tried.contains(&index));
        let mut choice = Choice::default();
        choice.offer(self.candidate(set, first));
        if let Some(second) = second {
            choice.offer(self.candidate(set, second));
        }
        choice.best()
    }
}

impl Strategy for LeastTime {
    fn pick(&self, set: &BackendSet<'_>, ctx: &PickCtx<'_>) -> Option<usize> {
        if set.up.is_empty() {
            return None;
        }
        if set.up.len() <= FULL_SCAN_MAX {
            self.full_scan(set, ctx.tried)
        } else {
            self.two_choices(set, ctx.tried)
        }
    }
}

/// One backend as seen by one pick, in the log domain.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    index: usize,
    /// `ln(estimate) + t/τ`; `None` before the backend's first sample.
    log_estimate: Option<f64>,
    /// `ln(in_flight + 1) − ln(weight)`.
    load: f64,
}

/// The running best of the candidates offered: the cheapest sampled one, the least loaded
/// unsampled one, and the best estimate to cost unsampled ones with.
#[derive(Debug, Default)]
struct Choice {
    sampled: Option<(usize, f64)>,
    unsampled: Option<(usize, f64)>,
    best_log_estimate: Option<f64>,
}

impl Choice {
    fn offer(&mut self, candidate: Candidate) {
        match candidate.log_estimate {
            Some(log) => {
                let cost = log + candidate.load;
                // Strictly cheaper: on ties the one offered first (the rotating start) stays.
                if self.sampled.is_none_or(|(_, best)| cost < best) {
                    self.sampled = Some((candidate.index, cost));
                }
                if self.best_log_estimate.is_none_or(|best| log < best) {
                    self.best_log_estimate = Some(log);
                }
            }
            None => {
                if self.unsampled.is_none_or(|(_, best)| candidate.load < best) {
                    self.unsampled = Some((candidate.index, candidate.load));
                }
            }
        }
    }

    fn best(self) -> Option<usize> {
        match (self.sampled, self.unsampled, self.best_log_estimate) {
            // An unsampled backend costs the best estimate times its own load; on a tie it
            // wins, so that it gets its first sample.
            (Some((sampled, cost)), Some((unsampled, load)), Some(log)) => {
                Some(if log + load <= cost { unsampled } else { sampled })
            }
            (sampled, unsampled, _) => sampled.or(unsampled).map(|(index, _)| index),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    use crate::backend::latency::{epoch, LatencyEstimate, TryTimer, TAU};
    use crate::backend::InFlight;
    use crate::config::StrategyKind;
    use crate::pool::Pool;

    const MS: Duration = Duration::from_millis(1);

    fn pool(weights: &[u32], up: Vec<usize>) -> Pool {
        crate::balance::tests::test_pool(StrategyKind::LeastTime, weights, up)
    }

    fn all_up(weights: &[u32]) -> Pool {
        pool(weights, (0..weights.len()).collect())
    }

    /// A fixed origin for synthetic times, after the epoch.
    fn base() -> Instant {
        epoch() + Duration::from_secs(1)
    }

    fn at(seconds: f64) -> Instant {
        base() + Duration::from_secs_f64(seconds)
    }

    fn ms(estimate: Option<Duration>) -> f64 {
        estimate.expect("sampled").as_secs_f64() * 1000.0
    }

    fn pick(pool: &Pool, tried: &[usize]) -> Option<usize> {
        pool.pick(&PickCtx::new(tried))
    }

    fn counts(pool: &Pool, picks: usize) -> Vec<usize> {
        let mut counts = vec![0; pool.backends.len()];
        for _ in 0..picks {
            counts[pick(pool, &[]).unwrap()] += 1;
        }
        counts
    }

    fn load(pool: &Pool, counts: &[usize]) -> Vec<InFlight> {
        pool.backends.iter().zip(counts).flat_map(|(backend, &count)| (0..count).map(|_| backend.acquire())).collect()
    }

    /// Gives backend i the estimate `latencies_ms[i]`, all sampled at time `t`.
    fn sample_all(pool: &Pool, t: f64, latencies_ms: &[u64]) {
        for (backend, &latency) in pool.backends.iter().zip(latencies_ms) {
            backend.latency().observe_at(at(t), Duration::from_millis(latency), false);
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6 * b.abs().max(1.0)
    }

    #[test]
    fn first_sample_is_the_estimate() {
        let estimate = LatencyEstimate::default();
        assert_eq!(estimate.estimate_at(at(0.0)), None);
        estimate.observe_at(at(0.0), 20 * MS, false);
        assert!(close(ms(estimate.estimate_at(at(0.0))), 20.0));
    }

    #[test]
    fn slower_samples_count_at_once_faster_ones_slowly() {
        let estimate = LatencyEstimate::default();
        estimate.observe_at(at(0.0), 20 * MS, false);
        // The peak: 100 ms replaces 20 ms at once.
        estimate.observe_at(at(0.001), 100 * MS, false);
        assert!(close(ms(estimate.estimate_at(at(0.001))), 100.0));
        // A 10 ms answer 1 ms later barely moves it (weight 1 - e^(-0.0001)).
        estimate.observe_at(at(0.002), 10 * MS, false);
        let after = ms(estimate.estimate_at(at(0.002)));
        assert!((99.0..100.0).contains(&after), "{after}");
        // After a long quiet time the decayed estimate is below the sample: it becomes the peak.
        estimate.observe_at(at(100.0), 10 * MS, false);
        assert!(close(ms(estimate.estimate_at(at(100.0))), 10.0));
    }

    #[test]
    fn an_idle_estimate_decays_with_tau() {
        let estimate = LatencyEstimate::default();
        estimate.observe_at(at(0.0), 100 * MS, false);
        let after_tau = ms(estimate.estimate_at(at(TAU)));
        assert!(close(after_tau, 100.0 / std::f64::consts::E), "{after_tau}");
    }

    #[test]
    fn failures_are_blended_in_as_timeouts() {
        let estimate = LatencyEstimate::default();
        // Sampled at 1 ms every millisecond, then failing: each failure priced at 1 s adds
        // about 1 s · 1 ms / 10 s = 0.1 ms.
        for i in 0..100 {
            estimate.observe_at(at(i as f64 * 0.001), MS, false);
        }
        for i in 100..300 {
            estimate.observe_at(at(i as f64 * 0.001), Duration::from_secs(1), true);
        }
        let after = ms(estimate.estimate_at(at(0.3)));
        assert!((19.0..22.0).contains(&after), "{after}");
        // A first sample that is a failure is the penalty itself.
        let fresh = LatencyEstimate::default();
        fresh.observe_at(at(0.0), Duration::from_secs(1), true);
        assert!(close(ms(fresh.estimate_at(at(0.0))), 1000.0));
        // After a long quiet time a failure weighs fully.
        estimate.observe_at(at(1000.0), Duration::from_secs(1), true);
        assert!(ms(estimate.estimate_at(at(1000.0))) > 999.0);
    }

    #[test]
    fn the_fastest_backend_gets_the_picks() {
        let pool = all_up(&[1, 1, 1]);
        sample_all(&pool, 0.0, &[1, 20, 80]);
        assert_eq!(counts(&pool, 300), [300, 0, 0]);
    }

    #[test]
    fn in_flight_requests_multiply_the_estimate() {
        let pool = all_up(&[1, 1, 1]);
        sample_all(&pool, 0.0, &[1, 20, 80]);
        // 1 ms × (19 + 1) = 20 ms ties with 20 ms × 1: still the first in scan order may win,
        // so go one past it.
        let _guards = load(&pool, &[20, 0, 0]);
        assert_eq!(counts(&pool, 10), [0, 10, 0]);
        let _more = load(&pool, &[0, 4, 0]);
        // Backend 1: 20 × 5 = 100 > 1 × 21 = 21: back to backend 0.
        assert_eq!(counts(&pool, 10), [10, 0, 0]);
    }

    #[test]
    fn weights_divide_the_cost() {
        let pool = all_up(&[1, 2]);
        sample_all(&pool, 0.0, &[10, 10]);
        // Equal estimates: cost 10 · (f + 1) / w, so backend 1 may carry twice as many.
        let _guards = load(&pool, &[1, 2]);
        // 10 · 2 / 1 = 20 vs 10 · 3 / 2 = 15.
        assert_eq!(counts(&pool, 4), [0, 4]);
        let _more = load(&pool, &[0, 2]);
        // 20 vs 10 · 5 / 2 = 25.
        assert_eq!(counts(&pool, 4), [4, 0]);
    }

    #[test]
    fn a_backend_failing_fast_stops_getting_picks() {
        let pool = all_up(&[1, 1, 1]);
        let latencies = [MS, 20 * MS, 80 * MS];
        sample_all(&pool, 0.0, &[1, 20, 80]);
        // One pick per millisecond. Backend 0 answers in 1 ms for the first second, then every
        // try on it is a fast failure (priced at 1 s).
        let mut failures = 0;
        for i in 1..=2000 {
            let now = at(i as f64 * 0.001);
            let index = pick(&pool, &[]).unwrap();
            if index == 0 && i > 1000 {
                failures += 1;
                pool.backends[0].latency().observe_at(now, Duration::from_secs(1), true);
            } else {
                pool.backends[index].latency().observe_at(now, latencies[index], false);
            }
        }
        // Each failure adds about 1 s · 1 ms / 10 s = 0.1 ms: some 200 of them take it past
        // backend 1's 20 ms, then it gets at most a probe now and then.
        assert!((150..=250).contains(&failures), "backend 0 failed {failures} of 1000 picks");
        assert_eq!(counts(&pool, 100), [0, 100, 0]);
    }

    #[test]
    fn an_idle_backend_decays_back_towards_the_others() {
        let pool = all_up(&[1, 1]);
        // Backend 0 was slow once (100 ms); backend 1 keeps answering in 10 ms.
        sample_all(&pool, 0.0, &[100, 10]);
        assert_eq!(counts(&pool, 10), [0, 10]);
        // 100 ms decays to 10 ms after τ·ln 10 ≈ 23 s; backend 1 was refreshed at 20 s.
        pool.backends[1].latency().observe_at(at(20.0), 10 * MS, false);
        assert_eq!(counts(&pool, 10), [0, 10]);
        pool.backends[1].latency().observe_at(at(25.0), 10 * MS, false);
        assert_eq!(counts(&pool, 10), [10, 0]);
    }

    #[test]
    fn unsampled_backends_are_costed_with_the_best_estimate() {
        let pool = all_up(&[1, 1, 1]);
        // Startup: nothing sampled, nothing in flight: the picks rotate.
        assert_eq!(counts(&pool, 9), [3, 3, 3]);
        // Backend 2 has no sample yet; the others have.
        pool.backends[0].latency().observe_at(at(0.0), 5 * MS, false);
        pool.backends[1].latency().observe_at(at(0.0), 50 * MS, false);
        // Ties with the best (5 ms, nothing in flight) go to the unsampled one.
        assert_eq!(counts(&pool, 3), [0, 0, 3]);
        // But it does not draw everything while its first answer is pending: with one in
        // flight it costs 5 ms × 2, more than backend 0.
        let _pending = load(&pool, &[0, 0, 1]);
        assert_eq!(counts(&pool, 3), [3, 0, 0]);
        // Several unsampled: the least loaded one.
        let fresh = all_up(&[1, 1, 1]);
        let _guards = load(&fresh, &[2, 0, 1]);
        assert_eq!(counts(&fresh, 3), [0, 3, 0]);
    }

    #[test]
    fn only_up_backends_are_chosen() {
        let pool = pool(&[1, 1, 1, 1], vec![1, 3]);
        sample_all(&pool, 0.0, &[1, 20, 1, 30]);
        assert_eq!(counts(&pool, 10), [0, 10, 0, 0]);
    }

    #[test]
    fn tried_backends_are_skipped() {
        let pool = all_up(&[1, 1, 1, 1]);
        sample_all(&pool, 0.0, &[1, 2, 3, 4]);
        assert_eq!(pick(&pool, &[0]), Some(1));
        assert_eq!(pick(&pool, &[0, 1]), Some(2));
        assert_eq!(pick(&pool, &[1, 0, 2]), Some(3));
        assert_eq!(pick(&pool, &[0, 1, 2, 3]), None);
    }

    fn large_pool(down: &[usize]) -> Pool {
        let size = 8 * FULL_SCAN_MAX; // 128: two choices, and room for the indices below
        let up = (0..size).filter(|i| !down.contains(i)).collect();
        pool(&vec![1; size], up)
    }

    #[test]
    fn large_pools_use_two_choices_and_never_pick_the_slowest() {
        let pool = large_pool(&[]);
        let latencies: Vec<u64> = (0..pool.backends.len()).map(|i| if i == 0 { 500 } else { 10 }).collect();
        sample_all(&pool, 0.0, &latencies);
        for _ in 0..10_000 {
            assert_ne!(pick(&pool, &[]), Some(0));
        }
    }

    #[test]
    fn large_pools_prefer_faster_backends() {
        let pool = large_pool(&[]);
        // Half fast, half slow: a slow one wins only when both draws are slow (1/4, not 1/2).
        let latencies: Vec<u64> = (0..pool.backends.len()).map(|i| if i % 2 == 0 { 5 } else { 50 }).collect();
        sample_all(&pool, 0.0, &latencies);
        let counts = counts(&pool, 40_000);
        let slow: usize = counts.iter().skip(1).step_by(2).sum();
        assert!((8_000..12_000).contains(&slow), "{slow} of 40000 on slow backends");
    }

    #[test]
    fn large_pools_respect_up_and_tried() {
        let down = [0, 5, 70];
        let pool = large_pool(&down);
        let tried = [1, 2, 3, 64, 127];
        for _ in 0..10_000 {
            let index = pick(&pool, &tried).unwrap();
            assert!(!down.contains(&index) && !tried.contains(&index), "{index}");
        }
        let all: Vec<usize> = pool.up.clone();
        assert_eq!(pick(&pool, &all), None);
        let all_but_one: Vec<usize> = all.iter().copied().filter(|&i| i != 99).collect();
        for _ in 0..100 {
            assert_eq!(pick(&pool, &all_but_one), Some(99));
        }
    }

    #[test]
    fn estimates_survive_new_snapshots() {
        let first = all_up(&[1, 1]);
        sample_all(&first, 0.0, &[30, 3]);
        let second = first.with_up(vec![0, 1]);
        assert_eq!(counts(&second, 5), [0, 5]);
    }

    #[test]
    fn the_timer_only_runs_for_least_time() {
        let backend = Backend::new("b", "127.0.0.1:1".parse().unwrap(), 1);
        TryTimer::start(StrategyKind::RoundRobin).succeeded(&backend);
        TryTimer::start(StrategyKind::Random).failed(&backend, Duration::from_secs(1));
        assert_eq!(backend.latency().estimate(), None);
        TryTimer::start(StrategyKind::LeastTime).succeeded(&backend);
        let answered = backend.latency().estimate().unwrap();
        assert!(answered < Duration::from_secs(1));
        std::thread::sleep(Duration::from_millis(10));
        TryTimer::start(StrategyKind::LeastTime).failed(&backend, Duration::from_secs(30));
        // 10 ms after the last sample a 30 s failure weighs 1 - e^(-0.001): about 30 ms.
        assert!(backend.latency().estimate().unwrap() > answered + Duration::from_millis(20));
    }
}
