//! A backend's up/down state ([`HealthState`]): why it is out of rotation ([`Down`]: its active
//! check, live traffic, or both), the consecutive-result counters behind `rise`/`fall`, and what
//! the last probe said. Atomics on the backend's shared state, so every snapshot sees the same
//! state and a kept backend keeps it across reloads. Probes and the publisher of snapshots are
//! `crate::health`'s.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a backend taken out by live-traffic failures stays out when its pool has no active
/// health check.
pub const PASSIVE_COOLDOWN: Duration = Duration::from_secs(10);

/// Outcome of the last active probe, for the status page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckResult {
    None,
    Success,
    Failure,
}

/// Why a backend is out of rotation: by its active check, by live-traffic failures, or both.
/// Empty when it is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Down(u8);

impl Down {
    /// Nothing holds it out.
    pub const NONE: Down = Down(0);
    /// Its active check failed `fall` times in a row: a verdict that keeps it out.
    pub const CHECK: Down = Down(1);
    /// Live traffic failed on it (connect failure, reset, timeout) `fall` times in a row.
    pub const TRAFFIC: Down = Down(2);

    pub fn is_up(self) -> bool {
        self.0 == 0
    }

    pub fn by_check(self) -> bool {
        self.0 & Self::CHECK.0 != 0
    }

    pub fn by_traffic(self) -> bool {
        self.0 & Self::TRAFFIC.0 != 0
    }

    /// Out by live-traffic failures alone: tried anyway when nothing in its pool is up.
    pub fn by_traffic_only(self) -> bool {
        self == Self::TRAFFIC
    }
}

/// A change of why a backend is out, returned by the `record_*` methods. The pool's publisher
/// must hear of every one: even a change that keeps a backend down can move it into or out of
/// the set tried when nothing is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub before: Down,
    pub after: Down,
}

impl Change {
    pub fn went_down(self) -> bool {
        self.before.is_up() && !self.after.is_up()
    }

    pub fn came_up(self) -> bool {
        !self.before.is_up() && self.after.is_up()
    }
}

/// Up/down state of one backend, with the consecutive-result counters behind rise/fall.
///
/// Active probes and live traffic keep streaks of their own, as HAProxy counts `observe` errors
/// apart from its checks: an answer on live traffic (a 500 included) never resets the failure
/// streak of the probes, so a backend whose check fails leaves rotation under any load; and a
/// probe never resets the live-traffic streak, which counts only what requests met.
#[derive(Debug)]
pub struct HealthState {
    /// [`Down`] bits. One word, so that each change has one before and one after.
    down: AtomicU8,
    /// Probe successes / failures in a row: moved by active probes only.
    probe_ok: AtomicU32,
    probe_fail: AtomicU32,
    /// Live-traffic failures in a row: a failure adds one, any answer clears it.
    live_fail: AtomicU32,
    /// Unix time (ms) of the last up/down transition, or of creation: for people (the status page).
    since_ms: AtomicU64,
    /// When live traffic last took it out, on a monotonic clock ([`mono_ms`]): for timing the
    /// passive cooldown, which a wall-clock step (NTP) must not stretch or cut short.
    ejected_mono_ms: AtomicU64,
    transitions: AtomicU64,
    last_check: AtomicU8,
    last_reason: Mutex<String>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Milliseconds since the first call, on the monotonic clock.
pub(crate) fn mono_ms() -> u64 {
    static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(std::time::Instant::now);
    u64::try_from(base.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Default for HealthState {
    /// New backends start up: traffic flows at once and the first probe confirms or corrects.
    fn default() -> Self {
        HealthState {
            down: AtomicU8::new(Down::NONE.0),
            probe_ok: AtomicU32::new(0),
            probe_fail: AtomicU32::new(0),
            live_fail: AtomicU32::new(0),
            since_ms: AtomicU64::new(now_ms()),
            ejected_mono_ms: AtomicU64::new(mono_ms()),
            transitions: AtomicU64::new(0),
            last_check: AtomicU8::new(0),
            last_reason: Mutex::new(String::new()),
        }
    }
}

impl HealthState {
    /// Why it is out of rotation, if it is.
    pub fn down(&self) -> Down {
        Down(self.down.load(Ordering::Acquire))
    }

    pub fn is_up(&self) -> bool {
        self.down().is_up()
    }

    /// Records a successful probe. `rise` in a row bring the backend up, whatever took it out:
    /// a live-traffic ejection restarted the count (see [`Self::record_live_failure`]), so they
    /// are probes that succeeded since.
    pub fn record_probe_success(&self, rise: u32) -> Option<Change> {
        self.probe_fail.store(0, Ordering::Relaxed);
        let streak = self.probe_ok.fetch_add(1, Ordering::AcqRel).saturating_add(1);
        if streak >= rise {
            self.clear(Down(Down::CHECK.0 | Down::TRAFFIC.0))
        } else {
            None
        }
    }

    /// Records a failed probe; `fall` in a row take the backend out until `rise` successes.
    pub fn record_probe_failure(&self, fall: u32) -> Option<Change> {
        self.probe_ok.store(0, Ordering::Relaxed);
        let streak = self.probe_fail.fetch_add(1, Ordering::AcqRel).saturating_add(1);
        if streak >= fall {
            self.set(Down::CHECK)
        } else {
            None
        }
    }

    /// Records a live-traffic failure (connect failure, reset, timeout); `fall` in a row take the
    /// backend out, until the cooldown (no active check) or `rise` probe successes from now.
    pub fn record_live_failure(&self, fall: u32) -> Option<Change> {
        let streak = self.live_fail.fetch_add(1, Ordering::AcqRel).saturating_add(1);
        if streak < fall || self.down().by_traffic() {
            return None;
        }
        // Both before the bit, which publishes them: the publisher times the cooldown from the
        // first, and only probes that succeed from now on may end the ejection.
        self.ejected_mono_ms.store(mono_ms(), Ordering::Relaxed);
        self.probe_ok.store(0, Ordering::Relaxed);
        self.set(Down::TRAFFIC)
    }

    /// A request was answered (any status): the live-traffic failures so far were not
    /// consecutive. The probes' streaks are not touched: an answer on `/` says nothing of what
    /// the check asks. Writes only when needed, so the hot path does not bounce the cache line
    /// between cores.
    pub fn record_answer(&self) {
        if self.live_fail.load(Ordering::Relaxed) != 0 {
            self.live_fail.store(0, Ordering::Relaxed);
        }
    }

    /// Ends a live-traffic ejection (the passive cooldown expired).
    pub(crate) fn readmit(&self) -> Option<Change> {
        self.clear(Down::TRAFFIC)
    }

    /// The pool no longer has an active check: nothing it said holds any more.
    pub(crate) fn forget_check(&self) -> Option<Change> {
        self.probe_ok.store(0, Ordering::Relaxed);
        self.probe_fail.store(0, Ordering::Relaxed);
        self.last_check.store(0, Ordering::Relaxed);
        self.clear(Down::CHECK)
    }

    fn set(&self, bits: Down) -> Option<Change> {
        let before = Down(self.down.fetch_or(bits.0, Ordering::AcqRel));
        self.changed(Change { before, after: Down(before.0 | bits.0) })
    }

    fn clear(&self, bits: Down) -> Option<Change> {
        let before = Down(self.down.fetch_and(!bits.0, Ordering::AcqRel));
        let after = Down(before.0 & !bits.0);
        if before.by_traffic() && !after.by_traffic() {
            // Readmitted: it takes `fall` new failures to take it out again.
            self.live_fail.store(0, Ordering::Relaxed);
        }
        self.changed(Change { before, after })
    }

    fn changed(&self, change: Change) -> Option<Change> {
        if change.before == change.after {
            return None;
        }
        if change.went_down() || change.came_up() {
            self.since_ms.store(now_ms(), Ordering::Relaxed);
            self.transitions.fetch_add(1, Ordering::Relaxed);
        }
        Some(change)
    }

    /// Unix time in milliseconds of the last transition (or creation).
    pub fn since_ms(&self) -> u64 {
        self.since_ms.load(Ordering::Relaxed)
    }

    /// When the passive cooldown of the last live-traffic ejection ends, in [`mono_ms`] terms.
    pub(crate) fn cooldown_ends_mono_ms(&self) -> u64 {
        self.ejected_mono_ms.load(Ordering::Relaxed).saturating_add(PASSIVE_COOLDOWN.as_millis() as u64)
    }

    /// Number of up/down transitions so far.
    pub fn transitions(&self) -> u64 {
        self.transitions.load(Ordering::Relaxed)
    }

    pub fn last_check(&self) -> (CheckResult, String) {
        let r = match self.last_check.load(Ordering::Relaxed) {
            1 => CheckResult::Success,
            2 => CheckResult::Failure,
            _ => CheckResult::None,
        };
        (r, self.last_reason.lock().map(|s| s.clone()).unwrap_or_default())
    }

    pub(crate) fn set_last_check(&self, ok: bool, reason: &str) {
        self.last_check.store(if ok { 1 } else { 2 }, Ordering::Relaxed);
        if let Ok(mut r) = self.last_reason.lock() {
            r.clear();
            r.push_str(reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fall_consecutive_failures_take_it_down_once() {
        let h = HealthState::default();
        assert!(h.is_up());
        assert_eq!(h.record_probe_failure(3), None);
        assert_eq!(h.record_probe_failure(3), None);
        let change = h.record_probe_failure(3).unwrap();
        assert!(change.went_down() && change.after == Down::CHECK);
        assert!(!h.is_up());
        assert_eq!(h.record_probe_failure(3), None, "a second transition to down");
        assert_eq!(h.transitions(), 1);
    }

    #[test]
    fn a_success_breaks_the_probe_failure_streak() {
        let h = HealthState::default();
        h.record_probe_failure(3);
        h.record_probe_failure(3);
        assert_eq!(h.record_probe_success(2), None);
        assert_eq!(h.record_probe_failure(3), None);
        assert_eq!(h.record_probe_failure(3), None);
        assert!(h.is_up());
        assert!(h.record_probe_failure(3).is_some_and(Change::went_down));
    }

    /// The defect of issue #15: every answer (a 500 included) reset the streak the probes
    /// built, so a backend failing its check stayed in rotation as long as traffic flowed.
    #[test]
    fn live_answers_never_reset_the_probe_streak() {
        let h = HealthState::default();
        h.record_probe_failure(2);
        for _ in 0..1000 {
            h.record_answer();
        }
        assert!(h.record_probe_failure(2).is_some_and(Change::went_down));
        assert_eq!(h.down(), Down::CHECK);
    }

    #[test]
    fn an_answer_breaks_the_live_failure_streak_and_probes_leave_it_alone() {
        let h = HealthState::default();
        h.record_live_failure(3);
        h.record_live_failure(3);
        h.record_answer();
        assert_eq!(h.record_live_failure(3), None);
        assert_eq!(h.record_live_failure(3), None);
        // A probe (of /health) in between says nothing of what requests met.
        h.record_probe_success(2);
        h.record_probe_success(2);
        let change = h.record_live_failure(3).unwrap();
        assert_eq!(change, Change { before: Down::NONE, after: Down::TRAFFIC });
        // Live failures never count towards the probes' fall.
        let h = HealthState::default();
        for _ in 0..2 {
            h.record_live_failure(3);
        }
        assert_eq!(h.record_probe_failure(2), None, "one probe failure of two");
    }

    #[test]
    fn rise_probe_successes_since_a_live_traffic_ejection_end_it() {
        let h = HealthState::default();
        h.record_probe_success(2);
        h.record_probe_success(2);
        for _ in 0..3 {
            h.record_live_failure(3);
        }
        assert_eq!(h.down(), Down::TRAFFIC);
        // The successes from before the ejection do not count.
        assert_eq!(h.record_probe_success(2), None);
        assert!(h.record_probe_success(2).is_some_and(Change::came_up));
        assert_eq!(h.transitions(), 2);
        // Readmitted: it takes `fall` new failures to take it out again.
        assert_eq!(h.record_live_failure(3), None);
        assert_eq!(h.record_live_failure(3), None);
        assert!(h.record_live_failure(3).is_some_and(Change::went_down));
    }

    #[test]
    fn both_reasons_are_kept_and_the_cooldown_ends_only_the_live_traffic_one() {
        let h = HealthState::default();
        for _ in 0..3 {
            h.record_live_failure(3);
        }
        let change = h.record_probe_failure(1).unwrap();
        assert!(!change.went_down(), "it was down already");
        assert_eq!(change.after, Down(Down::CHECK.0 | Down::TRAFFIC.0));
        assert!(h.down().by_check() && h.down().by_traffic() && !h.down().by_traffic_only());
        assert_eq!(h.readmit(), Some(Change { before: change.after, after: Down::CHECK }));
        assert!(!h.is_up(), "the check's verdict stands");
        assert_eq!(h.transitions(), 1);
        assert!(h.forget_check().is_some_and(Change::came_up));
    }

    #[test]
    fn rise_consecutive_successes_bring_it_up() {
        let h = HealthState::default();
        for _ in 0..2 {
            h.record_probe_failure(2);
        }
        assert!(!h.is_up());
        assert_eq!(h.record_probe_success(3), None);
        assert_eq!(h.record_probe_success(3), None);
        h.record_probe_failure(2); // streak broken
        assert_eq!(h.record_probe_success(3), None);
        assert_eq!(h.record_probe_success(3), None);
        assert!(h.record_probe_success(3).is_some_and(Change::came_up));
        assert!(h.is_up());
        assert_eq!(h.transitions(), 2);
    }

    /// A backend up for 1 s and down for 1 s, probed every 100 ms with rise 2 / fall 3: each
    /// phase causes exactly one transition, and never more than the phases allow.
    #[test]
    fn flapping_transitions_follow_the_hysteresis() {
        let h = HealthState::default();
        let (rise, fall) = (2, 3);
        let mut transitions = 0;
        let mut states = Vec::new();
        for tick in 0..100 {
            let healthy = (tick / 10) % 2 == 0; // 10 ticks = 1 s per phase
            let t = if healthy { h.record_probe_success(rise) } else { h.record_probe_failure(fall) };
            transitions += t.is_some() as u32;
            states.push(h.is_up());
        }
        // Phases: up(0-9) down(10-19) ... 10 phases → 9 changes of the truth.
        assert_eq!(transitions, 9);
        assert_eq!(h.transitions(), 9);
        // Down is noticed on the 3rd failing tick, up on the 2nd healthy tick.
        assert!(states[11] && !states[12]);
        assert!(!states[20] && states[21]);
    }

    /// Quick blips shorter than fall/rise cause no transition at all.
    #[test]
    fn blips_shorter_than_the_hysteresis_are_ignored() {
        let h = HealthState::default();
        for _ in 0..50 {
            h.record_probe_failure(3);
            h.record_probe_failure(3);
            h.record_probe_success(2);
            h.record_live_failure(3);
            h.record_live_failure(3);
            h.record_answer();
        }
        assert!(h.is_up());
        assert_eq!(h.transitions(), 0);
    }
}
