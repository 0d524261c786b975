//! lb configurations for tests: TOML builders, an in-process lb started from TOML text, and
//! what its pools hold.

use super::TestBackend;

/// Starts lb in-process from TOML text, as if read from `dir/lb.toml`.
pub async fn start_lb(toml: &str) -> lb::app::Running {
    let loaded = lb::config::parse(std::path::Path::new("lb.toml"), toml).expect("test config is valid");
    lb::app::Running::start(loaded.config).await.expect("lb starts")
}

/// A pool section with `backends`, for building configs in tests.
pub fn backends_toml(backends: &[&TestBackend]) -> String {
    let items: Vec<String> =
        backends.iter().map(|b| format!("{{ addr = \"{}\", name = \"{}\" }}", b.addr, b.name)).collect();
    format!("backends = [{}]", items.join(", "))
}

/// `[[listeners]]` entry.
pub fn listener(name: &str, bind: &str, mode: &str, pool: &str) -> String {
    format!("[[listeners]]\nname = \"{name}\"\nbind = \"{bind}\"\nmode = \"{mode}\"\npool = \"{pool}\"\n\n")
}

/// `[pools.NAME]` with `backends` (names as in TestBackend) and extra `key = value` lines.
pub fn pool(name: &str, strategy: &str, backends: &[&TestBackend], extra: &str) -> String {
    format!("[pools.{name}]\nstrategy = \"{strategy}\"\n{}\n{extra}\n", backends_toml(backends))
}

/// `[pools.NAME]` with weighted backends.
pub fn pool_w(name: &str, strategy: &str, backends: &[(&TestBackend, u32)], extra: &str) -> String {
    let items: Vec<String> = backends
        .iter()
        .map(|(b, w)| format!("{{ addr = \"{}\", name = \"{}\", weight = {w} }}", b.addr, b.name))
        .collect();
    format!("[pools.{name}]\nstrategy = \"{strategy}\"\nbackends = [{}]\n{extra}\n", items.join(", "))
}

/// `n` distinct ports nobody listens on right now (bound, read, released: a small race,
/// acceptable).
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> =
        (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    held.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

/// Names of the backends of `pool` that are in rotation in its current snapshot.
pub fn up_names(lb: &lb::app::Running, pool: &str) -> Vec<String> {
    let p = lb.pool(pool).unwrap().load_full();
    p.up.iter().map(|&i| p.backends[i].name.clone()).collect()
}

/// Names of the backends of `pool` that are up by their health state: neither their active
/// check nor live-traffic failures took them down. Unlike [`up_names`], this leaves out the
/// backends down by live traffic that lb tries anyway because nothing else is up.
pub fn healthy_names(lb: &lb::app::Running, pool: &str) -> Vec<String> {
    let p = lb.pool(pool).unwrap().load_full();
    p.backends.iter().filter(|b| b.health().is_up()).map(|b| b.name.clone()).collect()
}
