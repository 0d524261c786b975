//! Health checks and failover (SPEC.md "Failover") over real sockets: a backend killed under
//! load costs no request, comes back when restarted, a failing /health takes a backend out, a
//! black-hole backend is routed around, non-idempotent requests are never replayed, all-down
//! (by the checks) answers 503 at once while backends out by live traffic alone are still
//! tried, and stale pooled connections are retried transparently.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use crate::support::*;

const INTERVAL_MS: u64 = 100;
const TIMEOUT_MS: u64 = 100;
const RISE: u64 = 2;
const FALL: u64 = 3;

fn config(backends: &str, extra: &str) -> String {
    format!(
        "[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n\n\
         [pools.app]\nstrategy = \"round_robin\"\nconnect_timeout = \"500ms\"\nretries = 2\n{extra}\n{backends}\n\n\
         [pools.app.health]\nkind = \"http\"\npath = \"/health\"\ninterval = \"{INTERVAL_MS}ms\"\ntimeout = \"{TIMEOUT_MS}ms\"\nrise = {RISE}\nfall = {FALL}\n"
    )
}

/// Clients looping GETs until `stop`; returns (answered 200, anything else).
fn load(
    addr: std::net::SocketAddr,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(usize, usize)>> {
    (0..clients)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let client = client();
                let (mut ok, mut failed) = (0, 0);
                while !stop.load(Ordering::Relaxed) {
                    match client.get(format!("http://{addr}/").parse().unwrap()).await {
                        Ok(r) if r.status() == 200 => {
                            let _ = r.into_body().collect().await;
                            ok += 1
                        }
                        _ => failed += 1,
                    }
                }
                (ok, failed)
            })
        })
        .collect()
}

async fn finish(tasks: Vec<tokio::task::JoinHandle<(usize, usize)>>) -> (usize, usize) {
    let mut total = (0, 0);
    for t in tasks {
        let (ok, failed) = t.await.unwrap();
        total.0 += ok;
        total.1 += failed;
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_killed_under_load_costs_no_request_and_comes_back() {
    let (a, b, c) = (TestBackend::start("a").await, TestBackend::start("b").await, TestBackend::start("c").await);
    let lb = start_lb(&config(&backends_toml(&[&a, &b, &c]), "")).await;
    let addr = lb.listener_addr("web").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(addr, 8, stop.clone());

    tokio::time::sleep(Duration::from_millis(300)).await;
    b.kill();
    let killed_at = Instant::now();
    // Down within fall × interval plus one probe timeout (passive marks usually do it sooner).
    let bound = Duration::from_millis(FALL * INTERVAL_MS + TIMEOUT_MS);
    assert!(eventually(bound + Duration::from_secs(1), || !up_names(&lb, "app").contains(&"b".to_string())).await);
    let noticed = killed_at.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Restarted on the same port: back in rotation within rise × interval (plus slack).
    let b2 = TestBackend::start_on("b", b.addr).await;
    let restarted_at = Instant::now();
    assert!(
        eventually(Duration::from_millis(RISE * INTERVAL_MS) + Duration::from_secs(1), || up_names(&lb, "app").len()
            == 3)
        .await
    );
    let back = restarted_at.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = finish(tasks).await;

    assert_eq!(failed, 0, "{failed} failed requests of {}", ok + failed);
    assert!(ok > 100, "load too light to mean anything: {ok}");
    assert!(b2.hits() > 0, "restarted backend got no traffic");
    eprintln!("down noticed after {noticed:?} (bound {bound:?}); back after {back:?}; {ok} requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_health_check_takes_a_backend_out() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let lb = start_lb(&config(&backends_toml(&[&a, &b]), "")).await;
    let addr = lb.listener_addr("web").unwrap();
    b.set_healthy(false);
    assert!(eventually(Duration::from_secs(3), || up_names(&lb, "app") == ["a"]).await);
    let before = b.hits();
    let client = client();
    for _ in 0..30 {
        assert_eq!(get(&client, addr, "/").await.1, "a");
    }
    assert_eq!(b.hits(), before, "a backend out of rotation got requests");
    b.set_healthy(true);
    assert!(eventually(Duration::from_secs(3), || up_names(&lb, "app").len() == 2).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_hole_backend_is_routed_around() {
    let (hole, _task) = black_hole().await;
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let backends = format!(
        "backends = [{{ addr = \"{hole}\", name = \"hole\" }}, {{ addr = \"{}\", name = \"a\" }}, {{ addr = \"{}\", name = \"b\" }}]",
        a.addr, b.addr
    );
    let lb = start_lb(&config(&backends, "request_timeout = \"300ms\"")).await;
    let addr = lb.listener_addr("web").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(addr, 4, stop.clone());
    assert!(eventually(Duration::from_secs(3), || !up_names(&lb, "app").contains(&"hole".to_string())).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = finish(tasks).await;
    // Idempotent GETs that hit the hole time out and are retried elsewhere.
    assert_eq!(failed, 0, "{failed} of {} failed", ok + failed);
    assert!(a.hits() > 0 && b.hits() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_that_reached_a_dying_backend_is_not_replayed() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let lb = start_lb(&config(&backends_toml(&[&a, &b]), "")).await;
    let addr = lb.listener_addr("web").unwrap();
    // Each POST on a connection of its own: when the backend hangs up before lb has read the
    // whole body from the client, lb cannot keep the client connection after its 502.
    let post = |body: &'static [u8]| async move {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        let req = http::Request::post("/drop").header("host", "h").body(Full::new(Bytes::from_static(body))).unwrap();
        send.send_request(req).await.unwrap().status()
    };
    assert_eq!(post(b"order=1").await, 502);
    // Exactly one backend saw the POST.
    assert_eq!(a.hits() + b.hits(), 1, "replayed: a={} b={}", a.hits(), b.hits());
    // The same for a POST without a body, which lb's own upstream client carries.
    let (a0, b0) = (a.hits(), b.hits());
    assert_eq!(post(b"").await, 502);
    assert_eq!(a.hits() - a0 + b.hits() - b0, 1, "bodiless POST replayed");
    // A GET without a body dropped the same way *is* retried on the other backend.
    let (a0, b0) = (a.hits(), b.hits());
    let (status, _, _) = get(&client(), addr, "/drop").await;
    assert_eq!(status, 502, "both backends drop /drop");
    assert_eq!(a.hits() - a0 + b.hits() - b0, 2, "idempotent GET tried on both");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_backends_down_answers_503_at_once_and_recovers() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let lb = start_lb(&config(&backends_toml(&[&a, &b]), "")).await;
    let addr = lb.listener_addr("web").unwrap();
    a.set_healthy(false);
    b.set_healthy(false);
    assert!(eventually(Duration::from_secs(3), || up_names(&lb, "app").is_empty()).await);
    let client = client();
    let hits = a.hits() + b.hits();
    for _ in 0..20 {
        let started = Instant::now();
        let (status, body, headers) = get(&client, addr, "/").await;
        assert_eq!(status, 503);
        assert!(body.contains("pool app"), "{body}");
        assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
        // A guard against hangs and retry storms, not a speed claim.
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    assert_eq!(a.hits() + b.hits(), hits, "503s must not touch backends");
    a.set_healthy(true);
    assert!(eventually(Duration::from_secs(3), || up_names(&lb, "app") == ["a"]).await);
    assert_eq!(get(&client, addr, "/").await.0, 200);
}

/// Passive marks never empty a pool: backends out by live-traffic failures alone are still
/// tried (502 while they refuse), so one that comes back answers the next request instead of
/// after the 10 s cooldown (nginx never marks its last server down either).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_backends_killed_are_still_tried_and_answer_once_back() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    // No active check: passive detection alone must take them out.
    let toml = format!(
        "[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n[pools.app]\nstrategy = \"round_robin\"\n{}\n",
        backends_toml(&[&a, &b])
    );
    let lb = start_lb(&toml).await;
    let addr = lb.listener_addr("web").unwrap();
    let client = client();
    assert_eq!(get(&client, addr, "/").await.0, 200);
    a.kill();
    b.kill();
    // kill() takes effect asynchronously, so a first request may still be answered; then
    // connect failures give 502 until `fall` (3) failures per backend took both out.
    let mut statuses = Vec::new();
    for _ in 0..20 {
        if healthy_names(&lb, "app").is_empty() {
            break;
        }
        statuses.push(get(&client, addr, "/").await.0.as_u16());
    }
    assert!(healthy_names(&lb, "app").is_empty(), "never taken out: {statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 502), "{statuses:?}");
    // Still tried, both of them: 502, not 503.
    assert!(eventually(Duration::from_secs(3), || up_names(&lb, "app") == ["a", "b"]).await);
    for _ in 0..5 {
        assert_eq!(get(&client, addr, "/").await.0, 502);
    }
    let _a = TestBackend::start_on("a", a.addr).await;
    let (status, body, _) = get(&client, addr, "/").await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "a"), "answered at once, not after the cooldown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passively_failed_backend_is_readmitted_after_the_cooldown() {
    let a = TestBackend::start("a").await;
    // No active check: live traffic takes it out, the 10 s cooldown brings it back.
    let toml = format!(
        "[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n[pools.app]\nstrategy = \"round_robin\"\n{}\n",
        backends_toml(&[&a])
    );
    let lb = start_lb(&toml).await;
    let addr = lb.listener_addr("web").unwrap();
    let client = client();
    assert_eq!(get(&client, addr, "/").await.0, 200);
    a.kill();
    for _ in 0..20 {
        if healthy_names(&lb, "app").is_empty() {
            break;
        }
        get(&client, addr, "/").await;
    }
    assert!(healthy_names(&lb, "app").is_empty(), "three failed connects take it out");
    let _back = TestBackend::start_on("a", a.addr).await;
    // Neither a request nor a probe: the cooldown alone readmits it.
    assert!(eventually(Duration::from_secs(20), || healthy_names(&lb, "app") == ["a"]).await, "never readmitted");
    assert_eq!(get(&client, addr, "/").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_pooled_connections_are_retried_transparently() {
    let (addr_b, answered) = closes_reused_connections().await;
    let toml = format!(
        "[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n[pools.app]\nstrategy = \"round_robin\"\nretries = 0\nbackends = [{{ addr = \"{addr_b}\" }}]\n"
    );
    let lb = start_lb(&toml).await;
    let addr = lb.listener_addr("web").unwrap();
    // One client connection, so every request after the first meets the pooled connection.
    let mut conn = Conn::open(addr).await;
    for i in 0..10 {
        let (status, body) = conn.get("/").await.unwrap();
        assert_eq!((status, body.as_str()), (200, "ok"), "request {i}");
    }
    assert_eq!(answered.load(Ordering::SeqCst), 10);
    // Not the backend's fault: it stays in rotation.
    assert_eq!(up_names(&lb, "app").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_pooled_connection_under_a_post_is_no_mark_against_the_backend() {
    let (addr_b, answered) = closes_reused_connections().await;
    // fall = 1: a single passive mark would take the backend out. Probes (a connect) are rare.
    let toml = format!(
        "[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n[pools.app]\nstrategy = \"round_robin\"\n\
         backends = [{{ addr = \"{addr_b}\" }}]\n[pools.app.health]\nkind = \"tcp\"\ninterval = \"60s\"\nrise = 1\nfall = 1\n"
    );
    let lb = start_lb(&toml).await;
    let addr = lb.listener_addr("web").unwrap();
    assert!(eventually(Duration::from_secs(3), || up_names(&lb, "app").len() == 1).await);
    let mut conn = Conn::open(addr).await;
    assert_eq!(conn.get("/").await.unwrap().0, 200);
    // The POST goes out on the pooled connection, which the backend closes unanswered: it
    // cannot be replayed (502), but a keep-alive race is not the backend's failure.
    let (status, _) = conn.send(http::Method::POST, "/").await.unwrap();
    assert_eq!(status, 502);
    assert_eq!(answered.load(Ordering::SeqCst), 1, "the POST was not replayed");
    assert_eq!(up_names(&lb, "app").len(), 1, "a stale connection took the backend out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_counts_return_to_zero_after_mixed_outcomes() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let lb = start_lb(&config(&backends_toml(&[&a, &b]), "")).await;
    let addr = lb.listener_addr("web").unwrap();
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let c = client();
            for p in ["/", "/drop", "/slow/20", "/status/500"] {
                let _ = c.get(format!("http://{addr}{p}").parse().unwrap()).await.map(|r| r.into_body());
            }
            done.fetch_add(1, Ordering::SeqCst);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let pool = lb.pool("app").unwrap().load_full();
    assert!(eventually(Duration::from_secs(2), || pool.backends.iter().all(|x| x.in_flight() == 0)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_backend_stays_down_across_an_unrelated_reload() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let dir = temp_dir("health-reload");
    let path = dir.join("lb.toml");
    std::fs::write(&path, config(&backends_toml(&[&a, &b]), "")).unwrap();
    let mut lb = lb::app::Running::start(lb::config::load(&path).unwrap().config).await.unwrap();
    let addr = lb.listener_addr("web").unwrap();
    b.set_healthy(false);
    assert!(eventually(Duration::from_secs(3), || up_names(&lb, "app") == ["a"]).await);
    // An unrelated change: timeouts and a new pool. b's health state must be kept.
    let changed = config(&backends_toml(&[&a, &b]), "request_timeout = \"5s\"")
        + "\n[pools.spare]\nstrategy = \"random\"\nbackends = [{ addr = \"127.0.0.1:9\" }]\n";
    std::fs::write(&path, changed).unwrap();
    let changes = lb.reload(&path).await.unwrap();
    assert!(changes.to_string().contains("pool spare added"), "{changes}");
    assert_eq!(up_names(&lb, "app"), ["a"], "the reload put a down backend back into rotation");
    let before = b.hits();
    let client = client();
    for _ in 0..20 {
        assert_eq!(get(&client, addr, "/").await.1, "a");
    }
    assert_eq!(b.hits(), before);
    // And it still comes back through its health checks.
    b.set_healthy(true);
    assert!(eventually(Duration::from_secs(3), || up_names(&lb, "app").len() == 2).await);
}
