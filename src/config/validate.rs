//! Meaning checks on a parsed lb.toml, with defaults filled in.
//!
//! Everything a running proxy would trip over later is refused here, at load time, with the
//! location of the offending value: listeners naming a missing pool, duplicate listener names or
//! binds, pools without backends, duplicate backends, weight 0, unresolvable addresses, zero
//! timeouts, unreadable TLS files, `hash_key`/`hash_balance_factor` that are malformed or set
//! without `consistent_hash`, request limits (`max_headers`, `max_uri_bytes`, `max_body_bytes`)
//! out of range, backend TLS settings that cannot work (an unreadable or unparsable
//! CA file, an invalid server name, `tls_ca`/`tls_sni` without TLS). Odd-but-legal choices
//! become warnings.

use std::collections::{BTreeMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use rustls_pki_types::ServerName;

use super::raw::{Dur, HealthKind, Mode, RawBackend, RawConfig, RawHealth, RawListener, RawPool};
use super::strategy::{BalanceFactor, HashKey, HashOptions, StrategyKind};
use super::{
    defaults, line_col, BackendConfig, Config, ConfigError, HealthConfig, ListenerConfig, Loaded, PoolConfig,
    TlsCertConfig,
};
use crate::access_log::Target;
use crate::tls::{self, TlsClient};

struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
    warnings: Vec<String>,
}

/// Longest duration accepted for any timeout or interval.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

impl Ctx<'_> {
    fn err(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: self.path.to_owned(),
            location: Some(line_col(self.text, span.start)),
            message: message.into(),
        }
    }

    fn warn(&mut self, span: Range<usize>, message: impl AsRef<str>) {
        let (line, col) = line_col(self.text, span.start);
        self.warnings.push(format!("{}:{line}:{col}: warning: {}", self.path.display(), message.as_ref()));
    }

    /// A positive duration of at most [`MAX_DURATION`], or the default.
    fn duration(&self, v: &Option<Spanned<Dur>>, key: &str, default: Duration) -> Result<Duration, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) if s.get_ref().0.is_zero() => Err(self.err(s.span(), format!("{key} must be greater than 0"))),
            // Deadlines are `now + duration`: one past what the clock can hold would panic at
            // the first request rather than here.
            Some(s) if s.get_ref().0 > MAX_DURATION => {
                Err(self.err(s.span(), format!("{key} must be at most 365 days")))
            }
            Some(s) => Ok(s.get_ref().0),
        }
    }

    /// A listening address: `ip:port`, or `:port` / `*:port` for every IPv4 address (as nginx's
    /// `listen 80` and HAProxy's `bind :80` mean; `[::]:port` is every address, IPv6 and IPv4).
    /// A name is looked up once now, as for backends.
    fn bind_addr(&self, v: &Spanned<String>, what: &str) -> Result<SocketAddr, ConfigError> {
        let s = v.get_ref().trim();
        let port = s.strip_prefix("*:").or_else(|| s.strip_prefix(':'));
        if let Some(port) = port.and_then(|p| p.parse::<u16>().ok()) {
            return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
        }
        if let Ok(port) = s.parse::<u16>() {
            let message = format!(
                "invalid {what} address {s:?}: a port alone is ambiguous; write \":{port}\" or \"0.0.0.0:{port}\" \
                 (every IPv4 address), \"[::]:{port}\" (every address) or \"127.0.0.1:{port}\" (this host only)"
            );
            return Err(self.err(v.span(), message));
        }
        self.addr(v, what)
    }

    /// Resolves `host:port` (an IP literal, or a name looked up once now).
    fn addr(&self, v: &Spanned<String>, what: &str) -> Result<SocketAddr, ConfigError> {
        let s = v.get_ref().trim();
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(a);
        }
        let bad = |why: String| self.err(v.span(), format!("invalid {what} address {s:?}: {why}"));
        if !s.contains(':') {
            return Err(bad("expected host:port, e.g. \"127.0.0.1:9001\"".into()));
        }
        match s.to_socket_addrs() {
            Ok(mut it) => it.next().ok_or_else(|| bad("name resolved to no address".into())),
            Err(e) => Err(bad(e.to_string())),
        }
    }
}

pub(super) fn validate(path: &Path, text: &str, raw: RawConfig) -> Result<Loaded, ConfigError> {
    let mut cx = Ctx { path, text, warnings: Vec::new() };
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();

    let admin = match &raw.admin {
        Some(a) => Some(cx.bind_addr(&a.bind, "admin bind")?),
        None => None,
    };

    let mut pools = BTreeMap::new();
    for (name, pool) in &raw.pools {
        pools.insert(name.clone(), pool_config(&mut cx, name, pool)?);
    }

    if raw.listeners.is_empty() {
        return Err(ConfigError {
            path: path.to_owned(),
            location: None,
            message: "no [[listeners]] defined; lb needs at least one to accept traffic".into(),
        });
    }
    let mut listeners = Vec::with_capacity(raw.listeners.len());
    let mut names = HashSet::new();
    let mut binds: Vec<(SocketAddr, String)> = Vec::new();
    if let Some(a) = admin {
        binds.push((a, "[admin]".into()));
    }
    for l in &raw.listeners {
        let lc = listener_config(&cx, l, &pools, &base)?;
        if let (Mode::Tcp, Some(StrategyKind::ConsistentHash(options))) =
            (lc.mode, pools.get(&lc.pool).map(|p| p.strategy))
        {
            if options.key != HashKey::ClientIp {
                cx.warn(
                    l.pool.span(),
                    format!(
                        "tcp listener {:?}: pool {:?} hashes on hash_key = \"{}\", which a tcp session does not have; its sessions are hashed on the client IP",
                        lc.name, lc.pool, options.key
                    ),
                );
            }
        }
        if let (Mode::Http, Some(Some(v))) = (lc.mode, pools.get(&lc.pool).map(|p| p.send_proxy)) {
            cx.warn(
                l.pool.span(),
                format!(
                    "http listener {:?}: pool {:?} sets send_proxy = \"{}\", which only tcp listeners send; its requests go without a PROXY header",
                    lc.name, lc.pool, v.as_str()
                ),
            );
        }
        if !names.insert(lc.name.clone()) {
            return Err(cx.err(l.name.span(), format!("duplicate listener name {:?}", lc.name)));
        }
        // Port 0 asks the kernel for a fresh port each time, so it cannot collide.
        if lc.bind.port() != 0 {
            if let Some((addr, other)) = binds.iter().find(|(a, _)| overlaps(*a, lc.bind)) {
                let message = if *addr == lc.bind {
                    format!("listener {:?} binds {} which {other} already binds", lc.name, lc.bind)
                } else {
                    format!("listener {:?} binds {}, which overlaps {addr} of {other} (same port)", lc.name, lc.bind)
                };
                return Err(cx.err(l.bind.span(), message));
            }
            binds.push((lc.bind, lc.name.clone()));
        }
        listeners.push(lc);
    }
    for (name, pool) in &raw.pools {
        if !listeners.iter().any(|l| &l.pool == name) {
            cx.warn(pool.span(), format!("pool {name:?} is not used by any listener"));
        }
    }

    Ok(Loaded { config: Config { admin, listeners, pools }, warnings: cx.warnings })
}

/// True when binding both addresses fails: the same port on the same address, or on a
/// wildcard that covers the other (`0.0.0.0` every IPv4 address; `[::]` every address, since
/// Linux binds it dual-stack by default).
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    let covers =
        |wild: SocketAddr, other: SocketAddr| wild.ip().is_unspecified() && (wild.is_ipv6() || other.is_ipv4());
    a.port() == b.port() && (a.ip() == b.ip() || covers(a, b) || covers(b, a))
}

fn listener_config(
    cx: &Ctx<'_>,
    l: &RawListener,
    pools: &BTreeMap<String, PoolConfig>,
    base: &Path,
) -> Result<ListenerConfig, ConfigError> {
    let name = l.name.get_ref().trim().to_owned();
    if name.is_empty() {
        return Err(cx.err(l.name.span(), "listener name must not be empty"));
    }
    let pool = l.pool.get_ref().clone();
    if !pools.contains_key(&pool) {
        let known: Vec<&str> = pools.keys().map(String::as_str).collect();
        let known = if known.is_empty() { "none".to_owned() } else { known.join(", ") };
        return Err(cx.err(
            l.pool.span(),
            format!("listener {name:?} uses pool {pool:?}, which is not defined (defined pools: {known})"),
        ));
    }
    let max_connections = match &l.max_connections {
        Some(m) if *m.get_ref() == 0 => return Err(cx.err(m.span(), "max_connections must be at least 1")),
        Some(m) => *m.get_ref(),
        None => defaults::MAX_CONNECTIONS,
    };
    let (max_headers, max_uri_bytes, max_body_bytes) = request_limits(cx, l)?;
    let mut tls = Vec::with_capacity(l.tls.len());
    for t in &l.tls {
        let pair = TlsCertConfig {
            cert: readable_file(cx, &t.cert, base, "certificate")?,
            key: readable_file(cx, &t.key, base, "key")?,
        };
        // Parse now, so a broken PEM or a key that does not match fails --check and reloads.
        tls::check_pair(&pair).map_err(|e| cx.err(t.cert.span(), e.to_string()))?;
        tls.push(pair);
    }
    let access_log = match &l.access_log {
        None => None,
        Some(v) => match v.get_ref().trim() {
            "" | "off" => None,
            "stderr" => Some(Target::Stderr),
            "stdout" => Some(Target::Stdout),
            path => {
                let p = Path::new(path);
                let full = if p.is_absolute() { p.to_path_buf() } else { base.join(p) };
                let dir = full.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
                if !dir.is_dir() {
                    return Err(cx.err(v.span(), format!("access_log directory {} does not exist", dir.display())));
                }
                Some(Target::File(full))
            }
        },
    };
    Ok(ListenerConfig {
        access_log,
        accept_proxy: l.accept_proxy,
        bind: cx.bind_addr(&l.bind, "listener bind")?,
        mode: l.mode,
        pool,
        header_timeout: cx.duration(&l.header_timeout, "header_timeout", defaults::HEADER_TIMEOUT)?,
        idle_timeout: cx.duration(&l.idle_timeout, "idle_timeout", defaults::IDLE_TIMEOUT)?,
        max_connections,
        max_headers,
        max_uri_bytes,
        max_body_bytes,
        tls,
        name,
    })
}

/// Largest `max_headers`: hyper reserves room for this many on every request head it parses.
const MAX_MAX_HEADERS: u32 = 10_000;
/// Largest `max_uri_bytes`: hyper refuses longer request-targets itself (414).
const MAX_MAX_URI_BYTES: u32 = 65_534;

/// `max_headers`, `max_uri_bytes` and `max_body_bytes` of an http listener, checked.
fn request_limits(cx: &Ctx<'_>, l: &RawListener) -> Result<(usize, usize, Option<u64>), ConfigError> {
    let ranged = |v: &Option<Spanned<u32>>, key: &str, max: u32, default: usize| match v {
        Some(n) if !(1..=max).contains(n.get_ref()) => {
            Err(cx.err(n.span(), format!("{key} must be between 1 and {max} (got {})", n.get_ref())))
        }
        Some(n) => Ok(*n.get_ref() as usize),
        None => Ok(default),
    };
    let max_headers = ranged(&l.max_headers, "max_headers", MAX_MAX_HEADERS, defaults::MAX_HEADERS)?;
    let max_uri_bytes = ranged(&l.max_uri_bytes, "max_uri_bytes", MAX_MAX_URI_BYTES, defaults::MAX_URI_BYTES)?;
    let max_body_bytes = match &l.max_body_bytes {
        Some(n) if *n.get_ref() == 0 => {
            return Err(cx.err(n.span(), "max_body_bytes must be at least 1 (leave it out for no limit)"))
        }
        Some(n) => Some(*n.get_ref()),
        None => None,
    };
    Ok((max_headers, max_uri_bytes, max_body_bytes))
}

/// Resolves `v` against the config file's directory and checks that it can be read.
fn readable_file(cx: &Ctx<'_>, v: &Spanned<String>, base: &Path, what: &str) -> Result<PathBuf, ConfigError> {
    let p = Path::new(v.get_ref());
    let full = if p.is_absolute() { p.to_path_buf() } else { base.join(p) };
    match std::fs::read(&full) {
        Ok(bytes) if bytes.is_empty() => Err(cx.err(v.span(), format!("TLS {what} file {} is empty", full.display()))),
        Ok(_) => Ok(full),
        Err(e) => Err(cx.err(v.span(), format!("cannot read TLS {what} file {}: {e}", full.display()))),
    }
}

fn pool_config(cx: &mut Ctx<'_>, name: &str, pool: &Spanned<RawPool>) -> Result<PoolConfig, ConfigError> {
    let p = pool.get_ref();
    let raw_backends = p.backends.get_ref();
    if raw_backends.is_empty() {
        return Err(cx.err(p.backends.span(), format!("pool {name:?} has no backends")));
    }
    let mut backends = Vec::with_capacity(raw_backends.len());
    let mut seen_addr = HashSet::new();
    let mut seen_name = HashSet::new();
    for b in raw_backends {
        let addr = cx.addr(&b.addr, "backend")?;
        let weight = match &b.weight {
            None => 1,
            Some(w) if *w.get_ref() == 0 => {
                return Err(cx.err(w.span(), "weight must be at least 1 (remove the backend to take it out)"))
            }
            Some(w) if *w.get_ref() > defaults::MAX_WEIGHT => {
                return Err(cx.err(w.span(), format!("weight must be at most {}", defaults::MAX_WEIGHT)))
            }
            Some(w) => *w.get_ref(),
        };
        let bname = match &b.name {
            Some(n) if n.get_ref().trim().is_empty() => return Err(cx.err(n.span(), "backend name must not be empty")),
            Some(n) => n.get_ref().trim().to_owned(),
            None => b.addr.get_ref().trim().to_owned(),
        };
        if !seen_addr.insert(addr) {
            return Err(cx.err(b.addr.span(), format!("duplicate backend {addr} in pool {name:?}")));
        }
        if !seen_name.insert(bname.clone()) {
            let span = b.name.as_ref().map_or_else(|| b.addr.span(), |n| n.span());
            return Err(cx.err(span, format!("duplicate backend name {bname:?} in pool {name:?}")));
        }
        let tls = backend_tls(cx, p, b)?;
        backends.push(BackendConfig { name: bname, addr, weight, tls });
    }
    let tls = pool_tls(cx, name, p, &backends)?;
    let strategy = strategy(cx, name, p)?;
    if strategy == StrategyKind::RoundRobin && backends.iter().any(|b| b.weight != backends[0].weight) {
        cx.warn(
            p.strategy.span(),
            format!("pool {name:?}: round_robin ignores weights; use strategy = \"weighted\" to honour them"),
        );
    }
    Ok(PoolConfig {
        strategy,
        backends,
        connect_timeout: cx.duration(&p.connect_timeout, "connect_timeout", defaults::CONNECT_TIMEOUT)?,
        request_timeout: cx.duration(&p.request_timeout, "request_timeout", defaults::REQUEST_TIMEOUT)?,
        retries: p.retries.as_ref().map_or(defaults::RETRIES, |r| *r.get_ref()),
        health: p.health.as_ref().map(|h| health_config(cx, name, h)).transpose()?,
        tls,
        send_proxy: p.send_proxy.as_ref().map(|v| *v.get_ref()),
    })
}

/// The server name of a backend reached over TLS (its own `tls`, else the pool's), or `None`
/// for plain TCP: `tls_sni`, else the host its address was written with.
fn backend_tls(cx: &Ctx<'_>, p: &RawPool, b: &RawBackend) -> Result<Option<ServerName<'static>>, ConfigError> {
    if !b.tls.as_ref().or(p.tls.as_ref()).is_some_and(|t| *t.get_ref()) {
        return Ok(None);
    }
    let sni = p.tls_sni.as_ref();
    tls::server_name(sni.map(|s| s.get_ref().as_str()), b.addr.get_ref()).map(Some).map_err(|e| match sni {
        Some(s) => cx.err(s.span(), format!("invalid tls_sni: {e}")),
        None => {
            cx.err(b.addr.span(), format!("cannot check the TLS certificate of this backend: host {e}; set tls_sni"))
        }
    })
}

/// The CAs of a pool with TLS backends (`tls_ca`, parsed now so that a broken file fails
/// `--check` and reloads, or the system's store); `tls_ca`/`tls_sni` without TLS are refused.
fn pool_tls(
    cx: &Ctx<'_>,
    name: &str,
    p: &RawPool,
    backends: &[BackendConfig],
) -> Result<Option<TlsClient>, ConfigError> {
    if backends.iter().all(|b| b.tls.is_none()) {
        let misplaced = [("tls_ca", p.tls_ca.as_ref()), ("tls_sni", p.tls_sni.as_ref())];
        if let Some((key, Some(v))) = misplaced.into_iter().find(|(_, v)| v.is_some()) {
            return Err(cx.err(
                v.span(),
                format!("{key} only applies when pool {name:?} or one of its backends sets tls = true"),
            ));
        }
        return Ok(None);
    }
    match &p.tls_ca {
        Some(ca) => {
            let base = cx.path.parent().unwrap_or(Path::new(""));
            let path = readable_file(cx, ca, base, "CA")?;
            TlsClient::load(Some(&path)).map(Some).map_err(|e| cx.err(ca.span(), e))
        }
        None => {
            let span = p.tls.as_ref().map_or_else(|| p.backends.span(), |t| t.span());
            TlsClient::load(None).map(Some).map_err(|e| cx.err(span, e))
        }
    }
}

/// The pool's strategy with its options: `hash_key` and `hash_balance_factor` are checked and
/// folded into `consistent_hash`, and refused with any other strategy.
fn strategy(cx: &Ctx<'_>, name: &str, p: &RawPool) -> Result<StrategyKind, ConfigError> {
    let kind = *p.strategy.get_ref();
    if !matches!(kind, StrategyKind::ConsistentHash(_)) {
        let misplaced = [
            ("hash_key", p.hash_key.as_ref().map(|k| k.span())),
            ("hash_balance_factor", p.hash_balance_factor.as_ref().map(|f| f.span())),
        ];
        if let Some((key, Some(span))) = misplaced.into_iter().find(|(_, span)| span.is_some()) {
            return Err(cx.err(
                span,
                format!(
                    "{key} only applies to strategy = \"consistent_hash\" (pool {name:?} uses {:?})",
                    kind.as_str()
                ),
            ));
        }
        return Ok(kind);
    }
    let key = match &p.hash_key {
        Some(k) => HashKey::parse(k.get_ref()).map_err(|message| cx.err(k.span(), message))?,
        None => HashKey::ClientIp,
    };
    let balance_factor = match &p.hash_balance_factor {
        Some(f) => Some(BalanceFactor::new(*f.get_ref()).ok_or_else(|| {
            cx.err(f.span(), format!("hash_balance_factor must be a number above 1.0 (got {})", f.get_ref()))
        })?),
        None => None,
    };
    Ok(StrategyKind::ConsistentHash(HashOptions { key, balance_factor }))
}

fn health_config(cx: &mut Ctx<'_>, pool: &str, h: &RawHealth) -> Result<HealthConfig, ConfigError> {
    let count = |v: &Option<Spanned<u32>>, key: &str, default: u32| match v {
        Some(c) if *c.get_ref() == 0 => Err(cx.err(c.span(), format!("{key} must be at least 1"))),
        Some(c) => Ok(*c.get_ref()),
        None => Ok(default),
    };
    let rise = count(&h.rise, "rise", defaults::HEALTH_RISE)?;
    let fall = count(&h.fall, "fall", defaults::HEALTH_FALL)?;
    let path = match (&h.path, h.kind) {
        (Some(p), HealthKind::Tcp) => {
            cx.warn(p.span(), format!("pool {pool:?}: health path is ignored by kind = \"tcp\""));
            p.get_ref().clone()
        }
        (Some(p), HealthKind::Http) if !p.get_ref().starts_with('/') || p.get_ref().contains(char::is_whitespace) => {
            return Err(
                cx.err(p.span(), format!("health path {:?} must start with '/' and contain no spaces", p.get_ref()))
            )
        }
        (Some(p), HealthKind::Http) => p.get_ref().clone(),
        (None, _) => defaults::HEALTH_PATH.to_owned(),
    };
    let interval = cx.duration(&h.interval, "interval", defaults::HEALTH_INTERVAL)?;
    let timeout = cx.duration(&h.timeout, "timeout", defaults::HEALTH_TIMEOUT)?;
    if timeout > interval {
        if let Some(t) = &h.timeout {
            cx.warn(
                t.span(),
                format!("pool {pool:?}: health timeout is longer than interval; probes will overlap ticks"),
            );
        }
    }
    Ok(HealthConfig { kind: h.kind, path, interval, timeout, rise, fall })
}
