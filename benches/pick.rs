//! Cost of one `Pool::pick(&[])` per strategy and pool size.
//!
//! Pools of 2, 16, 256 and 4096 backends with weights 1..=5 (ignored except by `weighted` and
//! `least_connections`) and every tenth backend down, so the strategies work on `up` rather than
//! on the whole backend list. For `least_connections` the backends carry uneven in-flight counts
//! so the comparison does real work; above 64 backends it switches to power-of-two-choices.
//!
//! Run: `cargo bench --bench pick` (add `-- --quick` for a fast pass).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use lb::balance::StrategyKind;
use lb::pool::{Backend, InFlight, Pool, PoolSettings};

const SIZES: [usize; 4] = [2, 16, 256, 4096];

const STRATEGIES: [StrategyKind; 4] =
    [StrategyKind::RoundRobin, StrategyKind::Random, StrategyKind::Weighted, StrategyKind::LeastConnections];

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

/// Holds 0..=6 requests in flight per backend so `least_connections` compares real loads.
fn uneven_load(pool: &Pool) -> Vec<InFlight> {
    pool.backends.iter().enumerate().flat_map(|(i, backend)| (0..i % 7).map(|_| backend.acquire())).collect()
}

fn pick(c: &mut Criterion) {
    for kind in STRATEGIES {
        let mut group = c.benchmark_group(format!("pick/{kind}"));
        for size in SIZES {
            let pool = pool(kind, size);
            let _guards = uneven_load(&pool);
            group.bench_with_input(BenchmarkId::from_parameter(size), &pool, |b, pool| {
                b.iter(|| black_box(pool.pick(black_box(&[]))))
            });
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(1))
        .warm_up_time(Duration::from_millis(300))
        .sample_size(30);
    targets = pick
}
criterion_main!(benches);
