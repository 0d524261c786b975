//! Health: per-backend up/down state with rise/fall hysteresis, active probes, passive marks
//! from live traffic, and the per-pool publisher that turns state changes into new snapshots.
//!
//! State lives in atomics on the backend ([`HealthState`]), shared by every snapshot and kept
//! across reloads. Anything may record a result (a probe, or a request that failed to connect,
//! was reset or timed out); only the caller whose result changes why the backend is out learns
//! about it and wakes the pool's [`Monitor`], which publishes a snapshot whose `up` set matches
//! the atomics. Publishing uses `rcu`, so it never overwrites a concurrent reload.
//!
//! Probes and live traffic keep separate streaks and separate reasons ([`Down`]): a failed
//! check is a verdict, while live-traffic marks are a guess that must not empty a pool. When
//! nothing in a pool is up, the snapshot's `up` set holds the backends out by live traffic alone
//! and they are tried anyway; the request path stays as it was (no lock, no allocation).
//!
//! Each backend of a pool with `[health]` gets its own probe task: one slow backend never
//! delays the probes of others, and probes never touch the request path. In a pool without
//! `[health]`, a backend taken out by live traffic is readmitted after [`PASSIVE_COOLDOWN`]; if
//! it is still broken, the next failures (retried elsewhere) take it out again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use rustls_pki_types::ServerName;

use crate::config::{HealthConfig, HealthKind, ProxyVersion};
use crate::pool::{Backend, Pool, PoolHandle};
use crate::upstream::{self, Preface};

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
fn mono_ms() -> u64 {
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
    fn readmit(&self) -> Option<Change> {
        self.clear(Down::TRAFFIC)
    }

    /// The pool no longer has an active check: nothing it said holds any more.
    fn forget_check(&self) -> Option<Change> {
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
    fn cooldown_ends_mono_ms(&self) -> u64 {
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

    fn set_last_check(&self, ok: bool, reason: &str) {
        self.last_check.store(if ok { 1 } else { 2 }, Ordering::Relaxed);
        if let Ok(mut r) = self.last_reason.lock() {
            r.clear();
            r.push_str(reason);
        }
    }
}

/// Records a live-traffic failure of `backend` in `pool`; wakes the publisher on a change.
pub fn passive_failure(pool: &Pool, backend: &Backend, why: &str) {
    if let Some(change) = backend.health().record_live_failure(pool.settings.fall) {
        if change.went_down() {
            tracing::warn!(pool = %pool.name, backend = %backend.name, reason = why, "backend DOWN (live traffic)");
        }
        pool.settings.events.notify_one();
    }
}

/// The `up` set of a snapshot, and whether it is the fallback: the backends nothing holds out;
/// when there is none, those out by live-traffic failures alone. Passive marks never leave a
/// pool with nothing to try (nginx never marks its last server down; Envoy has its panic
/// threshold), while a failed active check is a verdict that keeps a backend out.
fn rotation(backends: &[Arc<Backend>]) -> (Vec<usize>, bool) {
    // One read per backend, so both passes see the same states.
    let states: Vec<Down> = backends.iter().map(|b| b.health().down()).collect();
    let up: Vec<usize> = (0..states.len()).filter(|&i| states[i].is_up()).collect();
    if !up.is_empty() {
        return (up, false);
    }
    ((0..states.len()).filter(|&i| states[i].by_traffic_only()).collect(), true)
}

/// The `up` set of a snapshot, read from the backends' health atomics (see [`rotation`]).
pub fn up_from_health(backends: &[Arc<Backend>]) -> Vec<usize> {
    rotation(backends).0
}

/// Publishes a new snapshot if the health atomics disagree with the current one's `up` set.
fn republish(handle: &ArcSwap<Pool>) {
    let mut fallback = false;
    let before = handle.rcu(|cur| {
        let (up, tried_anyway) = rotation(&cur.backends);
        fallback = tried_anyway && !up.is_empty();
        if up == cur.up {
            cur.clone()
        } else {
            Arc::new(cur.with_up(up))
        }
    });
    let after = handle.load();
    if fallback && before.up != after.up {
        tracing::warn!(pool = %after.name, backends = after.up.len(), "every backend is out by live-traffic failures; trying them anyway");
    }
}

/// Watches one pool: its probe tasks and the publisher. Dropping it stops them all.
pub struct Monitor {
    handle: PoolHandle,
    cfg: Option<HealthConfig>,
    publisher: JoinHandle<()>,
    probes: HashMap<SocketAddr, JoinHandle<()>>,
}

impl Monitor {
    /// Starts watching the pool behind `handle` with the given active-check settings.
    pub fn start(handle: PoolHandle, cfg: Option<HealthConfig>) -> Monitor {
        let events = handle.load().settings.events.clone();
        let publisher = tokio::spawn(publish_loop(handle.clone(), events, cfg.is_none()));
        let mut m = Monitor { handle, cfg, publisher, probes: HashMap::new() };
        m.sync_probes();
        m
    }

    /// After a reload stored a new snapshot: probes for new backends start, those of removed
    /// backends stop; changed check settings restart every probe.
    pub fn update(&mut self, cfg: Option<HealthConfig>) {
        if cfg != self.cfg {
            for (_, p) in self.probes.drain() {
                p.abort();
            }
            let passive_only = cfg.is_none();
            if passive_only {
                // No check left to bring them back: what the old one said goes with it.
                for b in &self.handle.load().backends {
                    b.health().forget_check();
                }
            }
            self.cfg = cfg;
            self.publisher.abort();
            let events = self.handle.load().settings.events.clone();
            self.publisher = tokio::spawn(publish_loop(self.handle.clone(), events, passive_only));
        }
        self.sync_probes();
        republish(&self.handle);
    }

    fn sync_probes(&mut self) {
        let pool = self.handle.load_full();
        self.probes.retain(|addr, task| {
            let keep = pool.backends.iter().any(|b| b.addr == *addr);
            if !keep {
                task.abort();
            }
            keep
        });
        let Some(cfg) = &self.cfg else { return };
        for b in &pool.backends {
            if !self.probes.contains_key(&b.addr) {
                let task = tokio::spawn(probe_loop(self.handle.clone(), b.addr, cfg.clone()));
                self.probes.insert(b.addr, task);
            }
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.publisher.abort();
        for p in self.probes.values() {
            p.abort();
        }
    }
}

/// Republishes whenever a transition is signalled. Without active checks, also readmits
/// passively failed backends after [`PASSIVE_COOLDOWN`].
async fn publish_loop(handle: PoolHandle, events: Arc<Notify>, passive_only: bool) {
    loop {
        let next_readmit = if passive_only {
            let pool = handle.load();
            let ejected = pool.backends.iter().filter(|b| b.health().down().by_traffic());
            ejected.map(|b| b.health().cooldown_ends_mono_ms()).min()
        } else {
            None
        };
        match next_readmit {
            Some(at_ms) => {
                let wait = Duration::from_millis(at_ms.saturating_sub(mono_ms()));
                tokio::select! {
                    _ = events.notified() => {}
                    _ = tokio::time::sleep(wait) => {
                        let pool = handle.load_full();
                        let now = mono_ms();
                        for b in pool.backends.iter().filter(|b| b.health().down().by_traffic()) {
                            if b.health().cooldown_ends_mono_ms() <= now && b.health().readmit().is_some() {
                                tracing::info!(pool = %pool.name, backend = %b.name, "backend readmitted after passive cooldown");
                            }
                        }
                    }
                }
            }
            None => events.notified().await,
        }
        republish(&handle);
    }
}

/// Probes one backend every `interval` (the first at once) and records the results.
async fn probe_loop(handle: PoolHandle, addr: SocketAddr, cfg: HealthConfig) {
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // The backend object may have been replaced by a reweighting reload; look it up fresh.
        let pool = handle.load_full();
        let Some(backend) = pool.backends.iter().find(|b| b.addr == addr).cloned() else {
            return;
        };
        let deadline = Instant::now() + cfg.timeout;
        let outcome = match tokio::time::timeout_at(deadline, probe(&backend, pool.settings.send_proxy, &cfg)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {:?}", cfg.timeout)),
        };
        // Idle connections the backend closed since the last tick are let go (see ConnPool::sweep).
        backend.conns().sweep();
        let h = backend.health();
        let change = match &outcome {
            Ok(()) => {
                backend.metrics().checks_ok.inc();
                h.set_last_check(true, "");
                h.record_probe_success(cfg.rise)
            }
            Err(reason) => {
                backend.metrics().checks_failed.inc();
                h.set_last_check(false, reason);
                h.record_probe_failure(cfg.fall)
            }
        };
        if let Some(change) = change {
            match &outcome {
                Ok(()) if change.came_up() => {
                    tracing::info!(pool = %pool.name, backend = %backend.name, rise = cfg.rise, "backend UP (health check)")
                }
                // Also when live traffic had it out already: now it stays out even if nothing
                // else is up.
                Err(reason) => {
                    tracing::warn!(pool = %pool.name, backend = %backend.name, %reason, fall = cfg.fall, "backend DOWN (health check)")
                }
                Ok(()) => {}
            }
            pool.settings.events.notify_one();
        }
    }
}

/// One probe: a TCP connect, and for `kind = "http"` a `GET path` whose status must be 2xx,
/// over TLS when the backend uses TLS, after a PROXY header (v2 `LOCAL`) when the pool sends
/// one, since such a backend expects it on every connection.
async fn probe(backend: &Backend, send_proxy: Option<ProxyVersion>, cfg: &HealthConfig) -> Result<(), String> {
    let addr = backend.addr;
    if cfg.kind == HealthKind::Tcp {
        TcpStream::connect(addr).await.map_err(|e| format!("connect failed: {e}"))?;
        return Ok(());
    }
    let mut stream =
        upstream::open(addr, backend.tls(), send_proxy.map(Preface::Own)).await.map_err(|e| e.to_string())?;
    // A TLS backend is asked for the name its certificate was checked against.
    let host = match backend.tls().map(|t| t.server_name()) {
        Some(ServerName::DnsName(name)) => name.as_ref().to_owned(),
        _ => addr.to_string(),
    };
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: lb-health-check\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        cfg.path
    );
    stream.write_all(req.as_bytes()).await.map_err(|e| format!("write failed: {e}"))?;
    // The status line fits in the first bytes; the rest of the answer is not needed.
    let mut buf = [0u8; 64];
    let mut len = 0;
    while len < 12 {
        let n = stream.read(&mut buf[len..]).await.map_err(|e| format!("read failed: {e}"))?;
        if n == 0 {
            return Err("connection closed before a status line".into());
        }
        len += n;
    }
    let line = String::from_utf8_lossy(&buf[..len]);
    let code = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| "answer is not HTTP/1.x".to_string())?;
    if (200..300).contains(&code) {
        Ok(())
    } else {
        Err(format!("status {code}"))
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

    fn pool_of(n: usize) -> Vec<Arc<Backend>> {
        (0..n).map(|i| Arc::new(Backend::new(format!("b{i}"), ([127, 0, 0, 1], 1000 + i as u16).into(), 1))).collect()
    }

    fn eject(b: &Backend) {
        for _ in 0..3 {
            b.health().record_live_failure(3);
        }
    }

    #[test]
    fn passive_marks_never_empty_the_rotation() {
        let backends = pool_of(3);
        eject(&backends[0]);
        assert_eq!(rotation(&backends), (vec![1, 2], false));
        eject(&backends[1]);
        eject(&backends[2]);
        assert_eq!(rotation(&backends), (vec![0, 1, 2], true), "every one out by live traffic: all tried");
        // Mixed: the one its check took down stays out, the rest are tried.
        backends[1].health().record_probe_failure(1);
        assert_eq!(rotation(&backends), (vec![0, 2], true));
        backends[0].health().record_probe_failure(1);
        backends[2].health().record_probe_failure(1);
        assert_eq!(rotation(&backends), (vec![], true), "all down by their checks: nothing to try");
        // One back up: the others are out again.
        backends[2].health().record_probe_success(1);
        assert_eq!(up_from_health(&backends), [2]);
    }
}
