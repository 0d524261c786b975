//! A backend's response-time estimate for `least_time` ([`LatencyEstimate`]), and the timer that
//! feeds it from each try ([`TryTimer`]).
//!
//! Each backend keeps a [`LatencyEstimate`] in its shared state (so it survives snapshots and
//! reloads), fed by the proxies: in http mode the time from the start of a try to the response
//! head, in tcp mode the time to connect. It is a peak EWMA (Finagle's and linkerd's): a sample
//! slower than the current estimate replaces it at once, so a backend that slows down is avoided
//! at once; a faster sample is blended in with weight `1 − e^(−Δt/τ)`, `Δt` being the time since
//! the previous sample and `τ` = [`DECAY`] (10 s), so it takes a while of good answers to be
//! trusted again. Between samples the estimate decays towards zero with the same `τ`: a backend
//! that gets no traffic looks a little faster every second until it is the best choice again
//! and its next answer says how it really does. That is how a backend that was slow (or
//! failing) comes back towards the others instead of being shunned forever.
//!
//! Errors count as slow: a failed try (connect error, reset, timeout, or a 5xx answer) is a sample as slow as the
//! pool's timeout (`request_timeout` in http mode, `connect_timeout` in tcp mode), so that a
//! backend failing *fast* never looks fast. It is blended in like a faster sample rather than
//! taken as a peak: one stray error on a busy, healthy backend moves its estimate by
//! `timeout · Δt/τ` (little, since `Δt` is short), while a backend failing every request is
//! pushed above the others within the first few milliseconds' worth of its traffic. The
//! estimate thus tends to the expected cost of a request with a failure priced at the timeout.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::Backend;
use crate::config::StrategyKind;

/// Time constant of the estimate's decay and of the weight of faster samples.
pub const DECAY: Duration = Duration::from_secs(10);

pub(crate) const TAU: f64 = DECAY.as_secs_f64();

/// Samples are clamped to at least this (seconds), so the logarithm is finite.
const MIN_SAMPLE: f64 = 1e-6;

/// The stored value before the first sample.
const UNSAMPLED: u64 = f64::NEG_INFINITY.to_bits();

/// The origin of the stored times (seconds since the first use in this process).
pub(crate) fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn seconds(at: Instant) -> f64 {
    at.saturating_duration_since(epoch()).as_secs_f64()
}

/// A backend's peak-EWMA response time. Lock-free: two atomics, updated with a CAS loop on
/// the estimate; a pick only loads it.
#[derive(Debug)]
pub struct LatencyEstimate {
    /// `ln(estimate in seconds) + updated / τ` as `f64` bits; −∞ before the first sample.
    log_cost: AtomicU64,
    /// Time of the last update, in seconds since [`epoch`], as `f64` bits.
    updated: AtomicU64,
}

impl Default for LatencyEstimate {
    fn default() -> Self {
        LatencyEstimate { log_cost: AtomicU64::new(UNSAMPLED), updated: AtomicU64::new(0f64.to_bits()) }
    }
}

impl LatencyEstimate {
    /// Records an answer that took `latency`.
    pub fn observe(&self, latency: Duration) {
        self.observe_at(Instant::now(), latency, false);
    }

    /// Records a failed try, priced at `penalty` (the timeout it stands for).
    pub fn observe_failure(&self, penalty: Duration) {
        self.observe_at(Instant::now(), penalty, true);
    }

    /// The estimate as of `now`; `None` before the first sample.
    pub fn estimate_at(&self, now: Instant) -> Option<Duration> {
        let log = self.log_cost()?;
        Some(Duration::from_secs_f64((log - seconds(now) / TAU).exp().min(1e9)))
    }

    /// The estimate as of now; `None` before the first sample.
    pub fn estimate(&self) -> Option<Duration> {
        self.estimate_at(Instant::now())
    }

    /// `ln(estimate) + t/τ`: comparable between backends without reading the clock.
    pub(crate) fn log_cost(&self) -> Option<f64> {
        Some(f64::from_bits(self.log_cost.load(Ordering::Relaxed))).filter(|log| log.is_finite())
    }

    pub(crate) fn observe_at(&self, now: Instant, sample: Duration, failure: bool) {
        let t = seconds(now);
        let sample = sample.as_secs_f64().max(MIN_SAMPLE);
        let mut current = self.log_cost.load(Ordering::Acquire);
        loop {
            let log = f64::from_bits(current);
            let estimate = if log.is_finite() {
                let decayed = (log - t / TAU).exp();
                if !failure && sample > decayed {
                    sample // the peak: slower answers count at once
                } else {
                    let since = (t - f64::from_bits(self.updated.load(Ordering::Relaxed))).max(0.0);
                    decayed + sample * (1.0 - (-since / TAU).exp())
                }
            } else {
                sample
            };
            let next = (estimate.max(MIN_SAMPLE).ln() + t / TAU).to_bits();
            match self.log_cost.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    // A racing update may pair its estimate with this time or the other way
                    // round; either is off by the microseconds between them.
                    self.updated.store(t.to_bits(), Ordering::Relaxed);
                    return;
                }
                Err(actual) => current = actual,
            }
        }
    }
}

/// Times one try at a backend and feeds the result to its estimate; inert (no clock read) in
/// pools whose strategy is not `least_time`.
#[derive(Debug, Clone, Copy)]
pub struct TryTimer(Option<Instant>);

impl TryTimer {
    pub fn start(kind: StrategyKind) -> Self {
        TryTimer((kind == StrategyKind::LeastTime).then(Instant::now))
    }

    /// The backend answered (http: the response head arrived; tcp: connected).
    pub fn succeeded(&self, backend: &Backend) {
        if let Some(started) = self.0 {
            backend.latency().observe(started.elapsed());
        }
    }

    /// The try failed; it counts as a try that took `penalty`.
    pub fn failed(&self, backend: &Backend, penalty: Duration) {
        if self.0.is_some() {
            backend.latency().observe_failure(penalty);
        }
    }
}
