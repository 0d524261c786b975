//! What a reload changes: a diff of two configurations, logged as one line.
//!
//! The diff is computed from the configurations alone (backends are identified by pool and
//! address, listeners by name), so it reads the same whether it describes a SIGHUP in a running
//! process or a comparison of two files.

use std::fmt;

use super::Config;

/// The changes between two configurations, in words.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub items: Vec<String>,
}

impl Changes {
    pub fn between(old: &Config, new: &Config) -> Changes {
        let mut items = Vec::new();
        for (name, pool) in &new.pools {
            let Some(prev) = old.pools.get(name) else {
                items.push(format!("pool {name} added ({} backends)", pool.backends.len()));
                continue;
            };
            if prev.strategy != pool.strategy {
                items.push(format!("pool {name} strategy {} -> {}", prev.strategy, pool.strategy));
            }
            for b in &pool.backends {
                match prev.backends.iter().find(|p| p.addr == b.addr) {
                    None => items.push(format!("pool {name} backend {} added", b.name)),
                    Some(p) if p.weight != b.weight => {
                        items.push(format!("pool {name} backend {} reweighted {} -> {}", b.name, p.weight, b.weight))
                    }
                    Some(p) if p.name != b.name => {
                        items.push(format!("pool {name} backend {} renamed {}", p.name, b.name))
                    }
                    Some(_) => {}
                }
            }
            for p in &prev.backends {
                if !pool.backends.iter().any(|b| b.addr == p.addr) {
                    items.push(format!("pool {name} backend {} removed", p.name));
                }
            }
            if prev.health != pool.health {
                items.push(format!("pool {name} health check changed"));
            }
            if (prev.connect_timeout, prev.request_timeout, prev.retries)
                != (pool.connect_timeout, pool.request_timeout, pool.retries)
            {
                items.push(format!("pool {name} timeouts/retries changed"));
            }
            let kept_backend_tls_changed =
                pool.backends.iter().any(|b| prev.backends.iter().any(|p| p.addr == b.addr && p.tls != b.tls));
            if kept_backend_tls_changed || prev.tls != pool.tls || prev.send_proxy != pool.send_proxy {
                items.push(format!("pool {name} backend TLS/PROXY settings changed"));
            }
        }
        for name in old.pools.keys() {
            if !new.pools.contains_key(name) {
                items.push(format!("pool {name} removed"));
            }
        }
        for l in &new.listeners {
            match old.listeners.iter().find(|o| o.name == l.name) {
                None => items.push(format!("listener {} added on {}", l.name, l.bind)),
                Some(o) if o.bind != l.bind => {
                    items.push(format!("listener {} moved {} -> {}", l.name, o.bind, l.bind))
                }
                Some(o) if o.pool != l.pool => items.push(format!("listener {} pool {} -> {}", l.name, o.pool, l.pool)),
                Some(o) if o != l => items.push(format!("listener {} settings changed", l.name)),
                Some(_) => {}
            }
        }
        for o in &old.listeners {
            if !new.listeners.iter().any(|l| l.name == o.name) {
                items.push(format!("listener {} removed", o.name));
            }
        }
        match (old.admin, new.admin) {
            (None, Some(a)) => items.push(format!("admin added on {a}")),
            (Some(a), None) => items.push(format!("admin removed from {a}")),
            (Some(a), Some(b)) if a != b => items.push(format!("admin moved {a} -> {b}")),
            _ => {}
        }
        Changes { items }
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

impl fmt::Display for Changes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.items.is_empty() {
            f.write_str("no changes")
        } else {
            f.write_str(&self.items.join("; "))
        }
    }
}
