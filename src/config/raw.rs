//! The lb.toml file as written: serde shapes with `deny_unknown_fields` and source spans.
//!
//! These types mirror the file one to one so that serde reports unknown keys, wrong types and
//! unknown enum values with the exact location. Meaning (missing pools, duplicate names, zero
//! weights, ...) is checked afterwards in `validate.rs`, which turns these into
//! [`crate::config::Config`]. Fields that semantic checks point at are `Spanned`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use toml::Spanned;

use super::strategy::StrategyKind;
use crate::proxy_protocol::ProxyVersion;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub listeners: Vec<RawListener>,
    #[serde(default)]
    pub pools: BTreeMap<String, Spanned<RawPool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub bind: Spanned<String>,
}

/// `mode = "http" | "tcp"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Http,
    Tcp,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Http => "http",
            Mode::Tcp => "tcp",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: Spanned<String>,
    pub bind: Spanned<String>,
    #[serde(default = "default_mode")]
    pub mode: Mode,
    pub pool: Spanned<String>,
    pub header_timeout: Option<Spanned<Dur>>,
    pub idle_timeout: Option<Spanned<Dur>>,
    pub max_connections: Option<Spanned<u32>>,
    /// http: most header lines in a request head (431 beyond).
    pub max_headers: Option<Spanned<u32>>,
    /// http: longest path and query in bytes (414 beyond).
    pub max_uri_bytes: Option<Spanned<u32>>,
    /// http: largest request body in bytes (413 beyond); no limit when absent.
    pub max_body_bytes: Option<Spanned<u64>>,
    #[serde(default)]
    pub tls: Vec<RawTls>,
    /// `"off"` (default), `"stderr"`, `"stdout"` or a file path.
    pub access_log: Option<Spanned<String>>,
    /// Every connection starts with a PROXY protocol header (v1 or v2) from a fronting proxy.
    #[serde(default)]
    pub accept_proxy: bool,
}

fn default_mode() -> Mode {
    Mode::Http
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    /// The name alone; `consistent_hash`'s options below are folded in by validation.
    pub strategy: Spanned<StrategyKind>,
    /// `consistent_hash` only: `client_ip`, `uri`, `header:NAME`, `cookie:NAME`, `query:NAME`.
    pub hash_key: Option<Spanned<String>>,
    /// `consistent_hash` only: bounded loads, a factor above 1.0.
    pub hash_balance_factor: Option<Spanned<f64>>,
    pub backends: Spanned<Vec<RawBackend>>,
    pub connect_timeout: Option<Spanned<Dur>>,
    pub request_timeout: Option<Spanned<Dur>>,
    pub retries: Option<Spanned<u32>>,
    pub health: Option<RawHealth>,
    /// Reach the backends over TLS (a backend's own `tls` overrides this).
    pub tls: Option<Spanned<bool>>,
    /// PEM file of the CAs that sign the backends' certificates; default: the system's.
    pub tls_ca: Option<Spanned<String>>,
    /// Server name for SNI and the certificate check; default: each backend's host.
    pub tls_sni: Option<Spanned<String>>,
    /// Write a PROXY protocol header to backends (tcp mode): `"v1"` or `"v2"`.
    pub send_proxy: Option<Spanned<ProxyVersion>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub addr: Spanned<String>,
    pub weight: Option<Spanned<u32>>,
    pub name: Option<Spanned<String>>,
    /// TLS to this backend, overriding the pool's `tls`.
    pub tls: Option<Spanned<bool>>,
}

/// `kind = "http" | "tcp"` of an active health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthKind {
    Http,
    Tcp,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub kind: HealthKind,
    pub path: Option<Spanned<String>>,
    pub interval: Option<Spanned<Dur>>,
    pub timeout: Option<Spanned<Dur>>,
    pub rise: Option<Spanned<u32>>,
    pub fall: Option<Spanned<u32>>,
}

/// A duration written as a string: `"250ms"`, `"2s"`, `"1m"`, `"1m30s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim()).map(Dur).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {s:?} ({e}); write a number with a unit, like \"250ms\", \"2s\" or \"1m\""
            ))
        })
    }
}
