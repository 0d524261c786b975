//! Health: per-backend up/down state with rise/fall hysteresis, active probes, passive marks
//! from live traffic, and the per-pool publisher that turns state changes into new snapshots.
//!
//! State lives in atomics on the backend ([`HealthState`]), shared by every snapshot and kept
//! across reloads. Anything may record a result (a probe, or a request that failed to connect,
//! was reset or timed out); only the caller whose result causes a transition learns about it
//! and wakes the pool's [`Monitor`], which publishes a snapshot whose `up` set matches the
//! atomics. Publishing uses `rcu`, so it never overwrites a concurrent reload.
//!
//! Each backend of a pool with `[health]` gets its own probe task: one slow backend never
//! delays the probes of others, and probes never touch the request path. In a pool without
//! `[health]`, a backend taken out by live traffic is readmitted after [`PASSIVE_COOLDOWN`]; if
//! it is still broken, the next failures (retried elsewhere) take it out again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
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
use crate::proxy::upstream_tls::{self, Preface};

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

/// Up/down state of one backend, with the consecutive-result counters behind rise/fall.
#[derive(Debug)]
pub struct HealthState {
    up: AtomicBool,
    ok_streak: AtomicU32,
    fail_streak: AtomicU32,
    /// Unix time (ms) of the last transition, or of creation: for people (the status page).
    since_ms: AtomicU64,
    /// The same moment on a monotonic clock ([`mono_ms`]): for timing the passive cooldown,
    /// which a wall-clock step (NTP) must not stretch or cut short.
    since_mono_ms: AtomicU64,
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
            up: AtomicBool::new(true),
            ok_streak: AtomicU32::new(0),
            fail_streak: AtomicU32::new(0),
            since_ms: AtomicU64::new(now_ms()),
            since_mono_ms: AtomicU64::new(mono_ms()),
            transitions: AtomicU64::new(0),
            last_check: AtomicU8::new(0),
            last_reason: Mutex::new(String::new()),
        }
    }
}

impl HealthState {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Records a success; returns true when this success brought the backend up (`rise` in a
    /// row while down).
    pub fn record_success(&self, rise: u32) -> bool {
        self.fail_streak.store(0, Ordering::Relaxed);
        let streak = self.ok_streak.fetch_add(1, Ordering::AcqRel).saturating_add(1);
        streak >= rise && self.transition(false, true)
    }

    /// Records a failure; returns true when this failure took the backend down (`fall` in a
    /// row while up).
    pub fn record_failure(&self, fall: u32) -> bool {
        self.ok_streak.store(0, Ordering::Relaxed);
        let streak = self.fail_streak.fetch_add(1, Ordering::AcqRel).saturating_add(1);
        streak >= fall && self.transition(true, false)
    }

    /// A request was answered: the failures so far were not consecutive. Writes only when
    /// needed, so the hot path does not bounce the cache line between cores.
    pub fn record_answer(&self) {
        if self.fail_streak.load(Ordering::Relaxed) != 0 {
            self.fail_streak.store(0, Ordering::Relaxed);
        }
    }

    /// Puts a backend back into rotation unconditionally (passive cooldown expired).
    fn readmit(&self) -> bool {
        self.fail_streak.store(0, Ordering::Relaxed);
        self.transition(false, true)
    }

    fn transition(&self, from: bool, to: bool) -> bool {
        let won = self.up.compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire).is_ok();
        if won {
            self.ok_streak.store(0, Ordering::Relaxed);
            self.fail_streak.store(0, Ordering::Relaxed);
            self.since_ms.store(now_ms(), Ordering::Relaxed);
            self.since_mono_ms.store(mono_ms(), Ordering::Relaxed);
            self.transitions.fetch_add(1, Ordering::Relaxed);
        }
        won
    }

    /// Unix time in milliseconds of the last transition (or creation).
    pub fn since_ms(&self) -> u64 {
        self.since_ms.load(Ordering::Relaxed)
    }

    /// When the passive cooldown of a backend taken out at the last transition ends, in
    /// [`mono_ms`] terms.
    fn cooldown_ends_mono_ms(&self) -> u64 {
        self.since_mono_ms.load(Ordering::Relaxed).saturating_add(PASSIVE_COOLDOWN.as_millis() as u64)
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

/// Records a live-traffic failure of `backend` in `pool`; wakes the publisher on a transition.
pub fn passive_failure(pool: &Pool, backend: &Backend, why: &str) {
    if backend.health().record_failure(pool.settings.fall) {
        tracing::warn!(pool = %pool.name, backend = %backend.name, reason = why, "backend DOWN (live traffic)");
        pool.settings.events.notify_one();
    }
}

/// A snapshot whose `up` set is read from the backends' health atomics.
pub fn up_from_health(backends: &[Arc<Backend>]) -> Vec<usize> {
    (0..backends.len()).filter(|&i| backends[i].health().is_up()).collect()
}

/// Publishes a new snapshot if the health atomics disagree with the current one's `up` set.
fn republish(handle: &ArcSwap<Pool>) {
    handle.rcu(|cur| {
        let up = up_from_health(&cur.backends);
        if up == cur.up {
            cur.clone()
        } else {
            Arc::new(cur.with_up(up))
        }
    });
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
            pool.backends.iter().filter(|b| !b.health().is_up()).map(|b| b.health().cooldown_ends_mono_ms()).min()
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
                        for b in pool.backends.iter().filter(|b| !b.health().is_up()) {
                            if b.health().cooldown_ends_mono_ms() <= now && b.health().readmit() {
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
        let transitioned = match &outcome {
            Ok(()) => {
                backend.metrics().checks_ok.inc();
                h.set_last_check(true, "");
                h.record_success(cfg.rise)
            }
            Err(reason) => {
                backend.metrics().checks_failed.inc();
                h.set_last_check(false, reason);
                h.record_failure(cfg.fall)
            }
        };
        if transitioned {
            match &outcome {
                Ok(()) => {
                    tracing::info!(pool = %pool.name, backend = %backend.name, rise = cfg.rise, "backend UP (health check)")
                }
                Err(reason) => {
                    tracing::warn!(pool = %pool.name, backend = %backend.name, %reason, fall = cfg.fall, "backend DOWN (health check)")
                }
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
        upstream_tls::open(addr, backend.tls(), send_proxy.map(Preface::Own)).await.map_err(|e| e.to_string())?;
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
        assert!(!h.record_failure(3));
        assert!(!h.record_failure(3));
        assert!(h.record_failure(3));
        assert!(!h.is_up());
        assert!(!h.record_failure(3), "a second transition to down");
        assert_eq!(h.transitions(), 1);
    }

    #[test]
    fn a_success_or_answer_breaks_the_failure_streak() {
        let h = HealthState::default();
        h.record_failure(3);
        h.record_failure(3);
        h.record_answer();
        assert!(!h.record_failure(3));
        assert!(!h.record_failure(3));
        assert!(!h.record_success(2) && h.is_up());
        assert!(!h.record_failure(3));
        assert!(h.is_up());
    }

    #[test]
    fn rise_consecutive_successes_bring_it_up() {
        let h = HealthState::default();
        for _ in 0..2 {
            h.record_failure(2);
        }
        assert!(!h.is_up());
        assert!(!h.record_success(3));
        assert!(!h.record_success(3));
        h.record_failure(2); // streak broken
        assert!(!h.record_success(3));
        assert!(!h.record_success(3));
        assert!(h.record_success(3));
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
            let t = if healthy { h.record_success(rise) } else { h.record_failure(fall) };
            transitions += t as u32;
            states.push(h.is_up());
        }
        // Phases: up(0-9) down(10-19) ... 10 phases → 9 changes of the truth.
        assert_eq!(transitions, 9);
        // Down is noticed on the 3rd failing tick, up on the 2nd healthy tick.
        assert!(states[11] && !states[12]);
        assert!(!states[20] && states[21]);
    }

    /// Quick blips shorter than fall/rise cause no transition at all.
    #[test]
    fn blips_shorter_than_the_hysteresis_are_ignored() {
        let h = HealthState::default();
        for _ in 0..50 {
            h.record_failure(3);
            h.record_failure(3);
            h.record_success(2);
        }
        assert!(h.is_up());
        assert_eq!(h.transitions(), 0);
    }
}
