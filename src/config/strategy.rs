//! The balancing vocabulary of lb.toml: which strategy a pool uses (`strategy`), and
//! `consistent_hash`'s options (`hash_key`, `hash_balance_factor`), as plain values.
//!
//! The strategies themselves live in `balance/`, which reads these; what is hashed on the
//! request path (`HashKey::hash_request`) is implemented there too.

use std::collections::BTreeSet;
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Deserializer};

/// The strategies users name in lb.toml (`strategy = "..."`), with their options.
///
/// `Copy` on purpose: a pool's kind travels by value from the validated config into every
/// snapshot, and two kinds are equal exactly when the strategy and its options are (a reload
/// that changes `hash_key` is a strategy change).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StrategyKind {
    RoundRobin,
    Random,
    Weighted,
    LeastConnections,
    /// `consistent_hash` with `hash_key` and `hash_balance_factor`.
    ConsistentHash(HashOptions),
    LeastTime,
}

impl StrategyKind {
    /// The name as written in lb.toml, without options.
    pub fn as_str(self) -> &'static str {
        match self {
            StrategyKind::RoundRobin => "round_robin",
            StrategyKind::Random => "random",
            StrategyKind::Weighted => "weighted",
            StrategyKind::LeastConnections => "least_connections",
            StrategyKind::ConsistentHash(_) => "consistent_hash",
            StrategyKind::LeastTime => "least_time",
        }
    }
}

impl std::fmt::Display for StrategyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StrategyKind::ConsistentHash(options) => write!(f, "consistent_hash({options})"),
            other => f.write_str(other.as_str()),
        }
    }
}

/// Reads the bare name (`strategy = "consistent_hash"`), with default options; validation
/// fills in the pool's `hash_key` and `hash_balance_factor`. Unknown names get serde's own
/// "unknown variant `x`, expected one of ..." message.
impl<'de> Deserialize<'de> for StrategyKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "snake_case")]
        enum Name {
            RoundRobin,
            Random,
            Weighted,
            LeastConnections,
            ConsistentHash,
            LeastTime,
        }
        Ok(match Name::deserialize(d)? {
            Name::RoundRobin => StrategyKind::RoundRobin,
            Name::Random => StrategyKind::Random,
            Name::Weighted => StrategyKind::Weighted,
            Name::LeastConnections => StrategyKind::LeastConnections,
            Name::ConsistentHash => StrategyKind::ConsistentHash(HashOptions::default()),
            Name::LeastTime => StrategyKind::LeastTime,
        })
    }
}

/// What `hash_key` names: the part of a request that is hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum HashKey {
    /// The client's IP address (the TCP peer).
    #[default]
    ClientIp,
    /// The request target: path and query, as sent.
    Uri,
    /// The first value of a request header (lowercase name).
    Header(&'static str),
    /// The value of a cookie.
    Cookie(&'static str),
    /// The value of a query parameter (raw, not percent-decoded).
    Query(&'static str),
}

impl HashKey {
    /// Parses `client_ip`, `uri`, `header:NAME`, `cookie:NAME` or `query:NAME`.
    pub fn parse(text: &str) -> Result<HashKey, String> {
        const FORMS: &str = "\"client_ip\", \"uri\", \"header:NAME\", \"cookie:NAME\" or \"query:NAME\"";
        let text = text.trim();
        match text {
            "client_ip" => return Ok(HashKey::ClientIp),
            "uri" => return Ok(HashKey::Uri),
            _ => {}
        }
        let Some((form, name)) = text.split_once(':') else {
            return Err(format!("unknown hash_key {text:?}; expected {FORMS}"));
        };
        let name = name.trim();
        if name.is_empty() && matches!(form, "header" | "cookie" | "query") {
            return Err(format!("hash_key {text:?} needs a name after \"{form}:\""));
        }
        match form {
            "header" => match http::HeaderName::from_bytes(name.as_bytes()) {
                Ok(header) => Ok(HashKey::Header(intern(header.as_str()))),
                Err(_) => Err(format!("hash_key {text:?}: {name:?} is not a valid header name")),
            },
            // Cookie names are tokens; query names just must not contain the separators.
            "cookie" if name.bytes().all(|b| b.is_ascii_graphic() && !b"=;,\"\\".contains(&b)) => {
                Ok(HashKey::Cookie(intern(name)))
            }
            "cookie" => Err(format!("hash_key {text:?}: {name:?} is not a valid cookie name")),
            "query" if name.bytes().all(|b| b.is_ascii_graphic() && !b"&=#".contains(&b)) => {
                Ok(HashKey::Query(intern(name)))
            }
            "query" => Err(format!("hash_key {text:?}: {name:?} is not a valid query parameter name")),
            _ => Err(format!("unknown hash_key {text:?}; expected {FORMS}")),
        }
    }
}

impl std::fmt::Display for HashKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HashKey::ClientIp => f.write_str("client_ip"),
            HashKey::Uri => f.write_str("uri"),
            HashKey::Header(name) => write!(f, "header:{name}"),
            HashKey::Cookie(name) => write!(f, "cookie:{name}"),
            HashKey::Query(name) => write!(f, "query:{name}"),
        }
    }
}

/// `hash_balance_factor`, kept in thousandths so that the strategy kind stays `Eq` and `Hash`
/// and the load check is integer arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BalanceFactor {
    milli: u64,
}

impl BalanceFactor {
    /// `None` unless `factor` is finite and above 1.0. Rounded to thousandths, at least 1.001,
    /// at most 10⁶ (far beyond any bound that still bounds anything).
    pub fn new(factor: f64) -> Option<BalanceFactor> {
        (factor.is_finite() && factor > 1.0)
            .then(|| BalanceFactor { milli: ((factor * 1000.0).round() as u64).clamp(1001, 1_000_000_000) })
    }

    pub fn as_f64(self) -> f64 {
        self.milli as f64 / 1000.0
    }

    /// The factor in thousandths, for integer arithmetic on the request path.
    pub fn milli(self) -> u64 {
        self.milli
    }
}

/// `consistent_hash`'s options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct HashOptions {
    pub key: HashKey,
    pub balance_factor: Option<BalanceFactor>,
}

impl std::fmt::Display for HashOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "hash_key={}", self.key)?;
        if let Some(factor) = self.balance_factor {
            write!(f, ", hash_balance_factor={}", factor.as_f64())?;
        }
        Ok(())
    }
}

/// A `'static` copy of a configured name, made once per distinct name for the life of the
/// process: it keeps [`HashKey`] (and so the strategy kind) `Copy`. Only config loading calls
/// this, so the set is bounded by the names ever written in lb.toml.
fn intern(name: &str) -> &'static str {
    static NAMES: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());
    let mut names = NAMES.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(&known) = names.get(name) {
        return known;
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.insert(leaked);
    leaked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_keys_parse_and_print() {
        for (text, key) in [
            ("client_ip", HashKey::ClientIp),
            ("uri", HashKey::Uri),
            ("header:X-User", HashKey::Header("x-user")),
            ("cookie:session", HashKey::Cookie("session")),
            ("query:id", HashKey::Query("id")),
        ] {
            assert_eq!(HashKey::parse(text), Ok(key), "{text}");
        }
        assert_eq!(HashKey::Header("x-user").to_string(), "header:x-user");
        for bad in ["ip", "header:", "cookie", "header:bad name", "cookie:a=b", "query:a&b", "path:x", ""] {
            assert!(HashKey::parse(bad).is_err(), "{bad:?} accepted");
        }
        // Interned: the same name is one allocation.
        let (HashKey::Header(a), HashKey::Header(b)) =
            (HashKey::parse("header:x-a").unwrap(), HashKey::parse("header:X-A").unwrap())
        else {
            unreachable!()
        };
        assert!(std::ptr::eq(a, b));
    }

    #[test]
    fn balance_factors_must_exceed_one() {
        assert_eq!(BalanceFactor::new(1.25).map(BalanceFactor::as_f64), Some(1.25));
        assert_eq!(BalanceFactor::new(1.0001).map(BalanceFactor::as_f64), Some(1.001));
        for bad in [1.0, 0.5, -2.0, f64::NAN, f64::INFINITY] {
            assert_eq!(BalanceFactor::new(bad), None, "{bad}");
        }
    }
}
