//! End-to-end distribution of each strategy through real sockets: real backends, real lb,
//! real HTTP clients on 127.0.0.1.

use std::collections::HashMap;
use std::time::Duration;

use crate::support::*;

async fn three(names: [&str; 3]) -> Vec<TestBackend> {
    let mut v = Vec::new();
    for n in names {
        v.push(TestBackend::start(n).await);
    }
    v
}

fn pool_toml(strategy: &str, backends: &str) -> String {
    format!(
        "[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n\n[pools.app]\nstrategy = \"{strategy}\"\n{backends}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_gives_each_backend_exactly_n_of_k_times_n() {
    let b = three(["a", "b", "c"]).await;
    let lb = start_lb(&pool_toml("round_robin", &backends_toml(&[&b[0], &b[1], &b[2]]))).await;
    let addr = lb.listener_addr("web").unwrap();
    let client = client();
    let mut order = Vec::new();
    for _ in 0..300 {
        let (status, body, _) = get(&client, addr, "/").await;
        assert_eq!(status, 200);
        order.push(body);
    }
    assert_eq!((b[0].hits(), b[1].hits(), b[2].hits()), (100, 100, 100));
    // Strict rotation: every window of 3 consecutive answers names three different backends.
    for w in order.windows(3) {
        assert!(w[0] != w[1] && w[1] != w[2] && w[0] != w[2], "not a rotation: {w:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_gives_each_backend_its_weight_in_every_window() {
    let b = three(["a", "b", "c"]).await;
    let backends = format!(
        "backends = [{{ addr = \"{}\", name = \"a\", weight = 1 }}, {{ addr = \"{}\", name = \"b\", weight = 2 }}, {{ addr = \"{}\", name = \"c\", weight = 3 }}]",
        b[0].addr, b[1].addr, b[2].addr
    );
    let lb = start_lb(&pool_toml("weighted", &backends)).await;
    let addr = lb.listener_addr("web").unwrap();
    let client = client();
    let mut order = Vec::new();
    for _ in 0..60 {
        order.push(get(&client, addr, "/").await.1);
    }
    assert_eq!((b[0].hits(), b[1].hits(), b[2].hits()), (10, 20, 30));
    for window in order.chunks(6) {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for name in window {
            *counts.entry(name.as_str()).or_default() += 1;
        }
        assert_eq!((counts["a"], counts["b"], counts["c"]), (1, 2, 3), "window {window:?}");
        // Interleaved, not in bursts: the heaviest never answers three times in a row.
        assert!(!window.windows(3).any(|w| w.iter().all(|n| n == "c")), "burst in {window:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_spreads_uniformly() {
    let b = three(["a", "b", "c"]).await;
    let lb = start_lb(&pool_toml("random", &backends_toml(&[&b[0], &b[1], &b[2]]))).await;
    let addr = lb.listener_addr("web").unwrap();
    let client = client();
    for _ in 0..1500 {
        assert_eq!(get(&client, addr, "/").await.0, 200);
    }
    // Expected 500 each, standard deviation ~18: ±100 is over five deviations.
    for x in &b {
        assert!((400..=600).contains(&x.hits()), "{} got {} of 1500", x.name, x.hits());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_steers_fresh_requests_away_from_busy_backends() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let lb = start_lb(&pool_toml("least_connections", &backends_toml(&[&a, &b]))).await;
    let addr = lb.listener_addr("web").unwrap();
    let client = client();
    // Requests to /slowif/a/... hang for 1.5 s on a and return at once on b. Once a holds
    // one, b (zero in flight) must get the rest; round-robin would split them evenly.
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move { get(&c, addr, "/slowif/a/1500").await.0 }));
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(a.hits() + b.hits(), 20);
    assert!(a.hits() <= 3, "busy backend a still got {} of 20", a.hits());
    // Every in-flight count is back to zero once the responses are complete.
    let pool = lb.pool("app").unwrap().load_full();
    assert!(pool.backends.iter().all(|x| x.in_flight() == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_keep_round_robin_exact() {
    let b = three(["a", "b", "c"]).await;
    let lb = start_lb(&pool_toml("round_robin", &backends_toml(&[&b[0], &b[1], &b[2]]))).await;
    let addr = lb.listener_addr("web").unwrap();
    get_concurrently(addr, 8, 75).await;
    // 600 picks from one shared cursor: exactly 200 each, whatever the interleaving.
    assert_eq!((b[0].hits(), b[1].hits(), b[2].hits()), (200, 200, 200));
}
