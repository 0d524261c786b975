//! Configuration: lb.toml → a validated [`Config`].
//!
//! The pipeline is read → parse (`raw.rs`: serde with `deny_unknown_fields`, every value that a
//! later check may point at keeps its source span) → validate (`validate.rs`: meaning, defaults,
//! address resolution, TLS file readability) → [`Config`], which holds only checked, resolved
//! values with defaults filled in. Every error renders as `PATH:LINE:COL: message` when the
//! location is known, so editors and terminals can jump to it.

pub mod diff;
mod raw;
mod strategy;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::proxy_protocol::ProxyVersion;
pub use crate::tls::TlsCertConfig;
pub use raw::{HealthKind, Mode};
pub use strategy::{BalanceFactor, HashKey, HashOptions, StrategyKind};

/// Defaults for the optional keys; documented in the README's configuration reference.
pub mod defaults {
    use std::time::Duration;
    pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    pub const MAX_CONNECTIONS: u32 = 10_000;
    /// hyper's own default; 431 beyond.
    pub const MAX_HEADERS: usize = 100;
    /// Path and query; 414 beyond. What common servers and CDNs accept.
    pub const MAX_URI_BYTES: usize = 8 * 1024;
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
    pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
    pub const RETRIES: u32 = 2;
    pub const HEALTH_PATH: &str = "/";
    pub const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
    pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
    pub const HEALTH_RISE: u32 = 2;
    pub const HEALTH_FALL: u32 = 3;
    /// Largest accepted backend weight; keeps the weighted schedule small.
    pub const MAX_WEIGHT: u32 = 1000;
}

/// A fully validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub admin: Option<SocketAddr>,
    pub listeners: Vec<ListenerConfig>,
    pub pools: BTreeMap<String, PoolConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    pub name: String,
    pub bind: SocketAddr,
    pub mode: Mode,
    pub pool: String,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: u32,
    /// http: most header lines in a request head.
    pub max_headers: usize,
    /// http: longest path and query, in bytes.
    pub max_uri_bytes: usize,
    /// http: largest request body, in bytes; `None` for no limit.
    pub max_body_bytes: Option<u64>,
    pub tls: Vec<TlsCertConfig>,
    /// Where this listener's access log goes; `None` when off.
    pub access_log: Option<crate::access_log::Target>,
    /// Connections start with a PROXY protocol header whose addresses stand for the client.
    pub accept_proxy: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// With its options (`consistent_hash`'s `hash_key` and `hash_balance_factor`).
    pub strategy: StrategyKind,
    pub backends: Vec<BackendConfig>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub retries: u32,
    pub health: Option<HealthConfig>,
    /// The CAs (`tls_ca`, or the system's) and the client config built from them; `Some` when
    /// at least one backend is reached over TLS.
    pub tls: Option<crate::tls::TlsClient>,
    /// PROXY protocol header written to backends in tcp mode.
    pub send_proxy: Option<ProxyVersion>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    pub name: String,
    pub addr: SocketAddr,
    pub weight: u32,
    /// The server name (SNI and certificate check) when this backend is reached over TLS.
    pub tls: Option<rustls_pki_types::ServerName<'static>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    pub kind: HealthKind,
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

/// A problem in a config file, located when possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    /// 1-based line and column.
    pub location: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location {
            Some((line, col)) => {
                write!(f, "{}:{line}:{col}: {}", self.path.display(), self.message)
            }
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// A config that loaded, plus things worth saying that are not errors.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// Rendered like errors (`PATH:LINE:COL: warning: ...`).
    pub warnings: Vec<String>,
}

/// Reads and validates `path`.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.to_owned(),
        location: None,
        message: format!("cannot read config: {e}"),
    })?;
    parse(path, &text)
}

/// Parses and validates `text` as if read from `path` (which locates errors and anchors
/// relative TLS paths).
pub fn parse(path: &Path, text: &str) -> Result<Loaded, ConfigError> {
    let raw: raw::RawConfig = toml::from_str(text).map_err(|e| ConfigError {
        path: path.to_owned(),
        location: e.span().map(|s| line_col(text, s.start)),
        message: e.message().trim_end().to_owned(),
    })?;
    validate::validate(path, text, raw)
}

/// 1-based line and column (in characters) of byte offset `at` in `text`.
pub(crate) fn line_col(text: &str, at: usize) -> (usize, usize) {
    let at = at.min(text.len());
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

impl Config {
    /// One line for `--check` and startup logs: counts of listeners, pools, backends.
    pub fn summary(&self) -> String {
        let backends: usize = self.pools.values().map(|p| p.backends.len()).sum();
        let listeners: Vec<String> = self
            .listeners
            .iter()
            .map(|l| {
                let tls = if l.tls.is_empty() { "" } else { "+tls" };
                format!("{} ({}{tls} {} -> {})", l.name, l.mode.as_str(), l.bind, l.pool)
            })
            .collect();
        format!(
            "{} listener(s): {}; {} pool(s), {} backend(s){}",
            self.listeners.len(),
            listeners.join(", "),
            self.pools.len(),
            backends,
            self.admin.map(|a| format!("; admin on {a}")).unwrap_or_default()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        let t = "a = 1\nbb = 2\n";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 6), (2, 1));
        assert_eq!(line_col(t, 8), (2, 3));
        assert_eq!(line_col(t, 999), (3, 1));
    }
}
