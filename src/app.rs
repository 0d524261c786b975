//! Assembles a running proxy from a [`Config`] (pool snapshots, listeners, the admin listener),
//! applies reloads to it, and takes it down gracefully.
//!
//! A reload is all or nothing: new sockets are bound first, and only when every bind succeeded
//! are pools and listeners switched. Pools are switched by storing a new snapshot into the same
//! handle, so every open connection sees the new backends on its next request.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::ServerConfig;

use crate::access_log::{AccessLog, Target};
use crate::admin::status::{SharedTopology, Topology};
use crate::config::diff::Changes;
use crate::config::{self, Config, ListenerConfig, Mode};
use crate::health::Monitor;
use crate::metrics::Metrics;
use crate::pool::{Pool, PoolHandle, Route};
use crate::server::{self, ListenerExtras, ListenerRuntime};
use crate::shutdown::Drain;
use crate::workers::{self, Workers};

/// Data-plane threads when `--workers` is 0: one per CPU core.
pub fn default_workers() -> usize {
    workers::default_count()
}

/// Why the proxy could not start, or a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind { what: String, addr: SocketAddr, source: io::Error },
    #[error("{0}")]
    Config(#[from] config::ConfigError),
    #[error("cannot open access log {target}: {source}")]
    AccessLog { target: String, source: io::Error },
    #[error("listener {listener:?}: {source}")]
    Tls { listener: String, source: Box<crate::tls::TlsError> },
    #[error("cannot start the worker threads: {0}")]
    Workers(io::Error),
}

/// One bound listener.
struct ListenerSlot {
    cfg: ListenerConfig,
    local: SocketAddr,
    route: Route,
    runtime: Arc<ArcSwap<ListenerRuntime>>,
    /// Shared with the accept loops, so a reload can hand the socket to another listener.
    sock: Arc<std::net::TcpListener>,
    /// Stops this listener's accept loop alone (removed or rebound on reload).
    stop: Drain,
}

/// A started proxy: what it bound, and the handles to reload and stop it.
pub struct Running {
    config: Config,
    listeners: BTreeMap<String, ListenerSlot>,
    admin: Option<SocketAddr>,
    /// Stops the admin listener's accept loop alone (moved or removed on reload).
    admin_stop: Drain,
    pools: BTreeMap<String, PoolHandle>,
    /// Access-log writers by target, shared by the listeners that name it.
    access_logs: BTreeMap<Target, Arc<AccessLog>>,
    /// Health probes and snapshot publisher of each pool; dropping one stops it.
    monitors: BTreeMap<String, Monitor>,
    metrics: Arc<Metrics>,
    /// Listeners and health checks as the admin status page shows them; republished on reload.
    status: SharedTopology,
    /// Held by every connection and session; triggered at shutdown.
    drain: Drain,
    /// The data-plane threads every listener accepts on.
    workers: Workers,
}

/// TLS config and access-log writer of a listener; writers are shared per target.
fn prepare(l: &ListenerConfig, logs: &mut BTreeMap<Target, Arc<AccessLog>>) -> Result<ListenerExtras, StartError> {
    let access_log = match &l.access_log {
        None => None,
        Some(t) => Some(match logs.get(t) {
            Some(w) => w.clone(),
            None => {
                let w = AccessLog::open(t).map_err(|source| StartError::AccessLog { target: t.to_string(), source })?;
                logs.insert(t.clone(), w.clone());
                w
            }
        }),
    };
    Ok(ListenerExtras { tls: listener_tls(l)?, access_log })
}

/// The TLS server config of a listener with certificates.
fn listener_tls(l: &ListenerConfig) -> Result<Option<Arc<ServerConfig>>, StartError> {
    if l.tls.is_empty() {
        return Ok(None);
    }
    crate::tls::server_config(&l.tls, l.mode == Mode::Http)
        .map(Some)
        .map_err(|source| StartError::Tls { listener: l.name.clone(), source: Box::new(source) })
}

fn bind_admin(addr: SocketAddr) -> Result<tokio::net::TcpListener, StartError> {
    server::bind(addr).map_err(|source| StartError::Bind { what: "admin".into(), addr, source })
}

fn bind(l: &ListenerConfig) -> Result<std::net::TcpListener, StartError> {
    server::bind_std(l.bind).map_err(|source| StartError::Bind {
        what: format!("listener {:?}", l.name),
        addr: l.bind,
        source,
    })
}

impl Running {
    /// Binds every listener (and the admin listener) of `config` and starts serving on one
    /// worker per core. Nothing is served unless everything could be bound.
    pub async fn start(config: Config) -> Result<Running, StartError> {
        Self::start_with_workers(config, workers::default_count()).await
    }

    /// [`Running::start`] with `workers` data-plane threads (see `crate::workers`).
    pub async fn start_with_workers(config: Config, workers: usize) -> Result<Running, StartError> {
        let pools: BTreeMap<String, PoolHandle> = config
            .pools
            .iter()
            .map(|(name, cfg)| (name.clone(), Arc::new(ArcSwap::from_pointee(Pool::build(name, cfg, None)))))
            .collect();
        let mut bound = Vec::with_capacity(config.listeners.len());
        let mut access_logs = BTreeMap::new();
        for l in &config.listeners {
            let extras = prepare(l, &mut access_logs)?;
            bound.push((l.clone(), bind(l)?, extras));
        }
        let admin_sock = config.admin.map(bind_admin).transpose()?;
        let monitors = pools
            .iter()
            .map(|(name, h)| (name.clone(), Monitor::start(h.clone(), config.pools[name].health.clone())))
            .collect();
        let mut running = Running {
            config,
            listeners: BTreeMap::new(),
            admin: None,
            admin_stop: Drain::default(),
            pools,
            monitors,
            access_logs,
            metrics: Metrics::new(),
            status: SharedTopology::default(),
            drain: Drain::default(),
            workers: Workers::start(workers).map_err(StartError::Workers)?,
        };
        running.metrics.set_pools(running.pools.clone());
        running.metrics.mark_loaded();
        for (l, sock, tls) in bound {
            running.spawn_listener(l, sock, tls, None);
        }
        running.publish_status();
        if let Some(sock) = admin_sock {
            running.spawn_admin(sock);
        }
        Ok(running)
    }

    /// Serves the admin endpoints on `sock` until the admin listener moves or lb stops.
    fn spawn_admin(&mut self, sock: tokio::net::TcpListener) {
        self.admin = sock.local_addr().ok();
        tracing::info!(addr = ?self.admin, "admin listening");
        self.admin_stop = Drain::default();
        let (metrics, status) = (self.metrics.clone(), self.status.clone());
        tokio::spawn(crate::admin::serve(sock, metrics, status, self.admin_stop.signal(), self.drain.signal()));
    }

    /// Starts accepting on `sock` on every worker. `limit_of`: the runtime that served the
    /// socket before (a renamed listener), whose connection limit this one takes over.
    fn spawn_listener(
        &mut self,
        cfg: ListenerConfig,
        sock: impl Into<Arc<std::net::TcpListener>>,
        extras: ListenerExtras,
        limit_of: Option<&ArcSwap<ListenerRuntime>>,
    ) {
        let sock: Arc<std::net::TcpListener> = sock.into();
        let local = sock.local_addr().unwrap_or(cfg.bind);
        // Validation guarantees that the pool exists.
        let Some(pool) = self.pools.get(&cfg.pool) else {
            return;
        };
        let route: Route = Arc::new(ArcSwap::new(pool.clone()));
        let mut runtime = ListenerRuntime::new(&cfg, route.clone(), &self.metrics, extras);
        if let Some(prev) = limit_of {
            runtime.inherit_limit(&prev.load());
        }
        let runtime = Arc::new(ArcSwap::from_pointee(runtime));
        let stop = Drain::default();
        tracing::info!(listener = %cfg.name, addr = %local, mode = cfg.mode.as_str(), pool = %cfg.pool, "listening");
        for (i, worker) in self.workers.handles().iter().enumerate() {
            let share = server::WorkerShare { index: i, load: self.workers.load().clone() };
            worker.spawn(server::accept_loop(sock.clone(), runtime.clone(), share, stop.signal(), self.drain.signal()));
        }
        self.listeners.insert(cfg.name.clone(), ListenerSlot { cfg, local, route, runtime, sock, stop });
    }

    /// Republishes what the status page shows of the configuration and the bound listeners.
    fn publish_status(&self) {
        self.status.store(Arc::new(Topology::new(&self.config, |name| self.listener_addr(name))));
    }

    /// Bound address of each listener, by name (useful when binding port 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.get(name).map(|l| l.local)
    }

    /// Opens every access-log file again (`SIGUSR1`, after logrotate moved them away).
    pub fn reopen_access_logs(&self) {
        for log in self.access_logs.values() {
            log.reopen();
        }
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// The live snapshot handle of a pool.
    pub fn pool(&self, name: &str) -> Option<&PoolHandle> {
        self.pools.get(name)
    }

    /// The process's metrics (what `GET /metrics` renders).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// SIGHUP: reads and validates `path` and applies it. On any error the running
    /// configuration stays untouched and the error is logged as `PATH:LINE:COL: message`.
    pub async fn reload(&mut self, path: &Path) -> Result<Changes, StartError> {
        let result = match config::load(path) {
            Ok(loaded) => {
                for w in &loaded.warnings {
                    tracing::warn!("{w}");
                }
                self.apply(loaded.config)
            }
            Err(e) => Err(StartError::Config(e)),
        };
        self.metrics.reload_result(result.is_ok());
        match &result {
            Ok(changes) => tracing::info!("reload applied: {changes}"),
            Err(e) => tracing::error!("reload rejected, keeping the running configuration: {e}"),
        }
        result
    }

    /// Switches to `new`. Binds first; if a bind fails nothing has changed.
    pub fn apply(&mut self, new: Config) -> Result<Changes, StartError> {
        let changes = Changes::between(&self.config, &new);
        // 0. Certificates (read afresh, so renewed files are served) and access logs (writers
        //    reused per target). Anything that fails here rejects the reload untouched.
        let mut extras = BTreeMap::new();
        let mut access_logs = self.access_logs.clone();
        for l in &new.listeners {
            extras.insert(l.name.clone(), prepare(l, &mut access_logs)?);
        }
        // Writers of targets no longer named close once the old runtimes are gone.
        access_logs.retain(|t, _| new.listeners.iter().any(|l| l.access_log.as_ref() == Some(t)));
        // 1. Sockets for listeners that are new or moved. Dropped again if any bind fails. An
        //    address held by a listener that goes away or moves (a renamed listener, two that
        //    swap addresses) is handed over: binding it a second time would fail.
        let mut fresh = BTreeMap::new();
        for l in &new.listeners {
            let rebind = self.listeners.get(&l.name).is_none_or(|s| s.cfg.bind != l.bind);
            if rebind {
                let leaving =
                    |s: &ListenerSlot| !new.listeners.iter().any(|n| n.name == s.cfg.name && n.bind == s.cfg.bind);
                let held = self
                    .listeners
                    .values()
                    .find(|s| l.bind.port() != 0 && (s.cfg.bind == l.bind || s.local == l.bind) && leaving(s));
                // A handed-over socket comes with the open connections it accepted, and so
                // with the permits they hold: its limit goes along.
                let (sock, limit) = match held {
                    Some(s) => (s.sock.clone(), Some(s.runtime.clone())),
                    None => (Arc::new(bind(l)?), None),
                };
                fresh.insert(l.name.clone(), (sock, limit));
            }
        }
        // The admin listener moves like a listener: the new address is bound before anything
        // is switched (a bind that fails rejects the reload), the old one stops accepting once
        // the reload is applied, and admin requests in flight there finish.
        let admin_moved = new.admin != self.config.admin;
        let admin_sock = match new.admin {
            Some(addr) if admin_moved => Some(bind_admin(addr)?),
            _ => None,
        };
        // 2. Pools: same handle for a kept name, so open connections follow at once.
        let mut pools = BTreeMap::new();
        for (name, cfg) in &new.pools {
            let handle = match self.pools.get(name) {
                Some(h) => {
                    let next = Pool::build(name, cfg, Some(&h.load()));
                    h.store(Arc::new(next));
                    h.clone()
                }
                None => Arc::new(ArcSwap::from_pointee(Pool::build(name, cfg, None))),
            };
            pools.insert(name.clone(), handle);
        }
        // Backends that left: close their idle connections; in-flight requests finish on theirs.
        for (name, old) in &self.pools {
            let kept = pools.get(name).map(|h| h.load_full());
            for b in old.load().backends.iter() {
                if !kept.as_ref().is_some_and(|k| k.backends.iter().any(|n| n.same_state(b))) {
                    b.conns().clear();
                }
            }
        }
        self.pools = pools;
        self.metrics.set_pools(self.pools.clone());
        // Health: probes follow the new backend sets; monitors of removed pools stop on drop.
        self.monitors.retain(|name, _| new.pools.contains_key(name));
        for (name, cfg) in &new.pools {
            match (self.monitors.get_mut(name), self.pools.get(name)) {
                (Some(m), _) => m.update(cfg.health.clone()),
                (None, Some(h)) => {
                    self.monitors.insert(name.clone(), Monitor::start(h.clone(), cfg.health.clone()));
                }
                (None, None) => {}
            }
        }
        // 3. Listeners: stop removed and moved ones, update kept ones, start new ones.
        let names: Vec<String> = self.listeners.keys().cloned().collect();
        for name in names {
            let keep = new.listeners.iter().any(|l| l.name == name) && !fresh.contains_key(&name);
            if !keep {
                if let Some(slot) = self.listeners.remove(&name) {
                    slot.stop.trigger();
                }
                if !new.listeners.iter().any(|l| l.name == name) {
                    self.metrics.forget_listener(&name);
                }
            }
        }
        for l in &new.listeners {
            let extras = extras.remove(&l.name).unwrap_or_default();
            if let Some((sock, limit)) = fresh.remove(&l.name) {
                self.spawn_listener(l.clone(), sock, extras, limit.as_deref());
            } else if let (Some(slot), Some(pool)) = (self.listeners.get_mut(&l.name), self.pools.get(&l.pool)) {
                slot.route.store(pool.clone());
                let mut runtime = ListenerRuntime::new(l, slot.route.clone(), &self.metrics, extras);
                // Same socket, same open connections: the same connection limit.
                runtime.inherit_limit(&slot.runtime.load());
                slot.runtime.store(Arc::new(runtime));
                slot.cfg = l.clone();
            }
        }
        if admin_moved {
            self.admin_stop.trigger();
            self.admin = None;
            if let Some(sock) = admin_sock {
                self.spawn_admin(sock);
            }
        }
        self.config = new;
        self.access_logs = access_logs;
        self.publish_status();
        Ok(changes)
    }

    /// Stops accepting, lets in-flight requests and sessions finish for up to `grace`, and
    /// reports whether everything finished in time.
    pub async fn shutdown(mut self, grace: Duration) -> bool {
        // The slots hold a share of each socket: drop them, so that the sockets close (new
        // connections are refused) as soon as the accept loops stop.
        for slot in std::mem::take(&mut self.listeners).into_values() {
            slot.stop.trigger();
        }
        self.drain.trigger();
        let finished = tokio::time::timeout(grace, self.drain.drained()).await.is_ok();
        if !finished {
            tracing::warn!(remaining = self.drain.watchers(), ?grace, "shutdown deadline passed; closing what is left");
        }
        // Every request and session that finished is logged: write the lines out before exit.
        let logs: Vec<Arc<AccessLog>> = self.access_logs.values().cloned().collect();
        let _ = tokio::task::spawn_blocking(move || {
            for log in logs {
                log.flush(std::time::Duration::from_secs(1));
            }
        })
        .await;
        finished
    }
}
