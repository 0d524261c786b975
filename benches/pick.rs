//! Cost of one `Pool::pick` per strategy and pool size, and of hashing a request's key.
//!
//! Pools of 2, 16, 256 and 4096 backends with weights 1..=5 (ignored except by `weighted`,
//! `least_connections`, `consistent_hash` and `least_time`) and every tenth backend down, so the
//! strategies work on `up` rather than on the whole backend list. The backends carry uneven
//! in-flight counts so the load comparisons do real work (`least_connections` and `least_time`
//! switch to power-of-two-choices above 64 backends), `least_time` backends have distinct
//! latency estimates, and `consistent_hash` picks cycle through 1024 different keys (with and
//! without `hash_balance_factor = 1.25`). Also: the per-request cost of hashing a request's
//! key, and of rebuilding a `consistent_hash` snapshot (its Maglev table) after a health flip.
//!
//! Run: `cargo bench --bench pick` (add `-- --quick` for a fast pass).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use lb::config::{BalanceFactor, HashKey, HashOptions, StrategyKind};
use lb::internals::{hash_bytes, Backend, InFlight, PickCtx, Pool, PoolSettings};

const SIZES: [usize; 4] = [2, 16, 256, 4096];

fn strategies() -> [(String, StrategyKind); 7] {
    let bounded = HashOptions { key: HashKey::ClientIp, balance_factor: BalanceFactor::new(1.25) };
    [
        StrategyKind::RoundRobin,
        StrategyKind::Random,
        StrategyKind::Weighted,
        StrategyKind::LeastConnections,
        StrategyKind::ConsistentHash(HashOptions::default()),
        StrategyKind::ConsistentHash(bounded),
        StrategyKind::LeastTime,
    ]
    .map(|kind| {
        let name = match kind {
            StrategyKind::ConsistentHash(HashOptions { balance_factor: Some(_), .. }) => {
                "consistent_hash_bounded".into()
            }
            other => other.as_str().to_owned(),
        };
        (name, kind)
    })
}

/// A pool of `size` backends, weights cycling 1..=5, every tenth backend (index 9, 19, ...) down.
fn pool(kind: StrategyKind, size: usize) -> Pool {
    let backends: Vec<Arc<Backend>> = (0..size)
        .map(|i| {
            let addr = ([127, 0, 0, 1], 10_000 + (i % 50_000) as u16).into();
            Arc::new(Backend::new(format!("b{i}"), addr, 1 + (i % 5) as u32))
        })
        .collect();
    let up = (0..size).filter(|i| i % 10 != 9).collect();
    let settings = PoolSettings {
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(30),
        retries: 2,
        ..Default::default()
    };
    Pool::new("bench".into(), backends, up, kind, Arc::new(settings), Default::default())
}

/// Holds 0..=6 requests in flight per backend so the load comparisons are real, and gives
/// every backend a latency estimate between 0.1 and 5 ms for `least_time`.
fn uneven_load(pool: &Pool) -> Vec<InFlight> {
    for (i, backend) in pool.backends.iter().enumerate() {
        backend.latency().observe(Duration::from_micros(100 + (i as u64 * 379) % 4900));
    }
    (0..pool.backends.len()).flat_map(|i| (0..i % 7).map(move |_| i)).map(|i| pool.acquire(i)).collect()
}

fn pick(c: &mut Criterion) {
    let keys: Vec<u64> = (0..1024).map(|i| hash_bytes(format!("user-{i}").as_bytes())).collect();
    for (name, kind) in strategies() {
        let mut group = c.benchmark_group(format!("pick/{name}"));
        for size in SIZES {
            let pool = pool(kind, size);
            let _guards = uneven_load(&pool);
            let hashed = matches!(kind, StrategyKind::ConsistentHash(_));
            let mut next = 0;
            group.bench_with_input(BenchmarkId::from_parameter(size), &pool, |b, pool| {
                b.iter(|| {
                    next = (next + 1) & 1023;
                    let ctx = PickCtx { tried: &[], key_hash: hashed.then(|| keys[next]) };
                    black_box(pool.pick(black_box(&ctx)))
                })
            });
        }
        group.finish();
    }
}

/// Rebuilding a snapshot after a health flip (`Pool::with_up`), which for `consistent_hash`
/// refills the Maglev table: off the request path, but it bounds how fast flips can publish.
fn rebuild(c: &mut Criterion) {
    let mut group = c.benchmark_group("rebuild/consistent_hash");
    for size in SIZES {
        let pool = pool(StrategyKind::ConsistentHash(HashOptions::default()), size);
        let up = pool.up.clone();
        group.bench_with_input(BenchmarkId::from_parameter(size), &pool, |b, pool| {
            b.iter(|| black_box(pool.with_up(black_box(up.clone()))))
        });
    }
    group.finish();
}

/// What http.rs adds per request for `consistent_hash`: finding and hashing the key.
fn key_hash(c: &mut Criterion) {
    let mut group = c.benchmark_group("key_hash");
    let mut request = http::Request::new(());
    *request.uri_mut() = "/catalog/item/12345?session=abcdef0123456789&page=2".parse().unwrap();
    let headers = request.headers_mut();
    headers.insert("x-user", "user-1234567".parse().unwrap());
    headers.insert("cookie", "theme=dark; sid=0123456789abcdef0123456789abcdef; lang=en".parse().unwrap());
    let client = std::net::IpAddr::from([192, 0, 2, 7]);
    for form in ["client_ip", "header:x-user", "cookie:sid", "uri", "query:session"] {
        let kind =
            StrategyKind::ConsistentHash(HashOptions { key: HashKey::parse(form).unwrap(), balance_factor: None });
        group.bench_function(form, |b| {
            b.iter(|| black_box(kind.request_key_hash(black_box(request.headers()), black_box(request.uri()), client)))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(1))
        .warm_up_time(Duration::from_millis(300))
        .sample_size(30);
    targets = pick, key_hash, rebuild
}
criterion_main!(benches);
