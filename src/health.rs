//! Health: per-backend up/down state with rise/fall hysteresis, active probes, passive marks
//! from live traffic, and the per-pool publisher that turns state changes into new snapshots.
//!
//! State lives in atomics on the backend ([`HealthState`]), shared by every snapshot and kept
//! across reloads. Anything may record a result (a probe, or a request that failed to connect,
//! was reset or timed out); only the caller whose result changes why the backend is out learns
//! about it and wakes the pool's [`Monitor`], which publishes a snapshot whose `up` set matches
//! the atomics. Publishing uses `rcu`, so it never overwrites a concurrent reload.
//!
//! Probes and live traffic keep separate streaks and separate reasons ([`crate::backend::Down`]): a failed
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
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use rustls_pki_types::ServerName;

use crate::backend::health::mono_ms;
use crate::backend::Backend;
use crate::config::{HealthConfig, HealthKind, ProxyVersion};
use crate::pool::{Pool, PoolHandle};
use crate::upstream::{self, Preface};

/// Publishes a new snapshot if the health atomics disagree with the current one's `up` set.
fn republish(handle: &ArcSwap<Pool>) {
    let mut fallback = false;
    let before = handle.rcu(|cur| {
        let (up, tried_anyway) = crate::pool::rotation(&cur.backends);
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
        assert_eq!(crate::pool::rotation(&backends), (vec![1, 2], false));
        eject(&backends[1]);
        eject(&backends[2]);
        assert_eq!(crate::pool::rotation(&backends), (vec![0, 1, 2], true), "every one out by live traffic: all tried");
        // Mixed: the one its check took down stays out, the rest are tried.
        backends[1].health().record_probe_failure(1);
        assert_eq!(crate::pool::rotation(&backends), (vec![0, 2], true));
        backends[0].health().record_probe_failure(1);
        backends[2].health().record_probe_failure(1);
        assert_eq!(crate::pool::rotation(&backends), (vec![], true), "all down by their checks: nothing to try");
        // One back up: the others are out again.
        backends[2].health().record_probe_success(1);
        assert_eq!(crate::pool::up_from_health(&backends), [2]);
    }
}
