//! Probe streaks and live-traffic signals are counted apart (issue #15). Live answers, 500s
//! included, never cancel a failing active check, so a backend whose check fails leaves rotation
//! under any load. Passive marks never empty a pool: when every backend is out by live-traffic
//! failures only, they are tried anyway, while a backend its active check took down stays out.
//! Real lb in-process, real backends and clients over 127.0.0.1; transitions are observed
//! through `/status.json`, never waited for with sleeps.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::*;

/// lb with an admin listener and one http listener on pool `app`, whose body is `pool`.
fn lb_toml(pool: &str) -> String {
    format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\n[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n\n\
         [pools.app]\nstrategy = \"round_robin\"\n{pool}"
    )
}

async fn status_json(lb: &lb::app::Running) -> Value {
    let (code, body, _) = get(&client(), lb.admin_addr().unwrap(), "/status.json").await;
    assert_eq!(code, 200);
    serde_json::from_str(&body).unwrap()
}

/// Polls `/status.json` until `cond` holds; panics with the last answer after [`PATIENCE`].
async fn status_until(lb: &lb::app::Running, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let s = status_json(lb).await;
        if cond(&s) {
            return s;
        }
        assert!(tokio::time::Instant::now() < deadline, "never: {what}\n{s:#}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The `app` pool's entry for backend `name`.
fn backend<'a>(s: &'a Value, name: &str) -> &'a Value {
    let backends = s["pools"][0]["backends"].as_array().unwrap();
    backends.iter().find(|b| b["name"] == name).unwrap_or_else(|| panic!("no backend {name}: {s:#}"))
}

/// The value of the series `family{pool="app",backend="NAME"}` in `/metrics`.
async fn gauge(lb: &lb::app::Running, family: &str, name: &str) -> Option<f64> {
    let (_, text, _) = get(&client(), lb.admin_addr().unwrap(), "/metrics").await;
    let prefix = format!("{family}{{backend=\"{name}\",pool=\"app\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).map(|v| v.parse().unwrap())
}

/// A backend whose `/health` answers 200 or 503 (`set_healthy`) and whose every other path
/// answers 500 at once; counts the requests other than `/health`.
struct Failing {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    healthy: Arc<AtomicBool>,
}

impl Failing {
    async fn start(healthy: bool) -> Failing {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let b = Failing {
            addr: listener.local_addr().unwrap(),
            hits: Arc::default(),
            healthy: Arc::new(AtomicBool::new(healthy)),
        };
        let (hits, healthy) = (b.hits.clone(), b.healthy.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (hits, healthy) = (hits.clone(), healthy.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let status = if req.uri().path() == "/health" {
                            if healthy.load(Ordering::SeqCst) {
                                StatusCode::OK
                            } else {
                                StatusCode::SERVICE_UNAVAILABLE
                            }
                        } else {
                            hits.fetch_add(1, Ordering::SeqCst);
                            StatusCode::INTERNAL_SERVER_ERROR
                        };
                        let mut r = Response::new(Full::new(Bytes::from_static(b"sick")));
                        *r.status_mut() = status;
                        async move { Ok::<_, std::convert::Infallible>(r) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        b
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// A raw HTTP/1.1 backend that resets (RST, unanswered) the connection of each of the first
/// `resets` requests other than `/health`, then answers every request 200 with its name on
/// keep-alive connections. `/health` always answers 200.
struct Flaky {
    addr: SocketAddr,
    reset: Arc<AtomicUsize>,
    answered: Arc<AtomicUsize>,
}

impl Flaky {
    async fn start(name: &'static str, resets: usize) -> Flaky {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let b = Flaky { addr: listener.local_addr().unwrap(), reset: Arc::default(), answered: Arc::default() };
        let (reset, answered) = (b.reset.clone(), b.answered.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let (reset, answered) = (reset.clone(), answered.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        let health = buf.starts_with(b"GET /health ");
                        buf.drain(..end + 4);
                        if !health && reset.fetch_add(1, Ordering::SeqCst) < resets {
                            // SO_LINGER 0: closing sends RST, as a crashing or overloaded server does.
                            let _ = s.set_zero_linger();
                            return;
                        }
                        if !health {
                            reset.fetch_sub(1, Ordering::SeqCst);
                            answered.fetch_add(1, Ordering::SeqCst);
                        }
                        let body = if health { "ok" } else { name };
                        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                        if s.write_all(head.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        b
    }

    fn resets(&self) -> usize {
        self.reset.load(Ordering::SeqCst)
    }

    fn answered(&self) -> usize {
        self.answered.load(Ordering::SeqCst)
    }
}

/// `clients` keep-alive clients sending GET / until `stop`; each returns the statuses it got
/// (status code → count, 0 for a failed request).
fn load(addr: SocketAddr, clients: usize, stop: Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<Vec<(u16, usize)>>> {
    (0..clients)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let client = client();
                let mut seen = std::collections::BTreeMap::<u16, usize>::new();
                while !stop.load(Ordering::Relaxed) {
                    let code = match client.get(format!("http://{addr}/").parse().unwrap()).await {
                        Ok(r) => {
                            let code = r.status().as_u16();
                            let _ = r.into_body().collect().await;
                            code
                        }
                        Err(_) => 0,
                    };
                    *seen.entry(code).or_default() += 1;
                }
                seen.into_iter().collect()
            })
        })
        .collect()
}

/// A backend whose `/health` answers 503 and whose other answers are 500, under steady
/// concurrent traffic: its check (fall = 2) takes it out although it answers every request.
/// Before the fix each answer reset the streak the probes built, and it stayed in rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_500s_do_not_cancel_a_failing_health_check() {
    let a = TestBackend::start("a").await;
    let sick = Failing::start(true).await;
    let pool = format!(
        "backends = [{{ addr = \"{}\", name = \"a\" }}, {{ addr = \"{}\", name = \"sick\" }}]\n\
         [pools.app.health]\nkind = \"http\"\npath = \"/health\"\ninterval = \"100ms\"\ntimeout = \"1s\"\nrise = 2\nfall = 2\n",
        a.addr, sick.addr
    );
    let lb = start_lb(&lb_toml(&pool)).await;
    let web = lb.listener_addr("web").unwrap();
    status_until(&lb, "sick passed a probe", |s| backend(s, "sick")["last_check"]["result"] == "success").await;

    // Traffic flows to both (sick answers 500) before its check starts failing.
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(web, 8, stop.clone());
    assert!(eventually(PATIENCE, || sick.hits() >= 50).await, "no traffic reached sick");
    sick.healthy.store(false, Ordering::SeqCst);

    let s =
        status_until(&lb, "sick taken out by its check under load", |s| backend(s, "sick")["state"] == "down").await;
    let j = backend(&s, "sick");
    assert_eq!(j["down_by"], "check", "{j:#}");
    assert_eq!(j["last_check"]["reason"], "status 503");
    // The snapshot requests balance over follows the health state.
    status_until(&lb, "sick out of rotation", |s| backend(s, "sick")["in_rotation"] == false).await;
    stop.store(true, Ordering::Relaxed);
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for t in tasks {
        for (code, n) in t.await.unwrap() {
            *statuses.entry(code).or_default() += n;
        }
    }
    assert_eq!(statuses.keys().copied().collect::<Vec<_>>(), [200, 500], "only a's 200s and sick's 500s: {statuses:?}");

    // From now on a gets every request: 8 clients × 25, exactly.
    let (a0, sick0) = (a.hits(), sick.hits());
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(tokio::spawn(async move {
            let client = client();
            for _ in 0..25 {
                let (status, body, _) = get(&client, web, "/").await;
                assert_eq!((status.as_u16(), body.as_str()), (200, "a"));
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(a.hits() - a0, 200);
    assert_eq!(sick.hits(), sick0, "a backend out of rotation got requests");
    let s = status_json(&lb).await;
    let j = backend(&s, "sick");
    assert_eq!((j["state"].as_str(), j["transitions"].as_u64()), (Some("down"), Some(1)), "{j:#}");
    assert_eq!(s["pools"][0]["backends_up"], 1);
}

/// A pool without `[health]` whose only backend reset 3 requests (fall = 3 takes it out) and
/// then answers: the 4th request is tried on it and gets 200, as with nginx or HAProxy. Before
/// the fix the pool was empty for the 10 s cooldown and lb answered 503 without trying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_backend_that_reset_three_requests_answers_the_fourth() {
    let only = Flaky::start("only", 3).await;
    let lb = start_lb(&lb_toml(&format!("backends = [{{ addr = \"{}\", name = \"only\" }}]\n", only.addr))).await;
    let web = lb.listener_addr("web").unwrap();
    let client = client();
    for i in 0..3 {
        assert_eq!(get(&client, web, "/").await.0, 502, "request {i}");
    }
    assert_eq!(only.resets(), 3);
    status_until(&lb, "the resets took it out", |s| backend(s, "only")["state"] == "down").await;

    let (status, body, _) = get(&client, web, "/").await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "only"), "the 4th request");
    for i in 0..10 {
        assert_eq!(get(&client, web, "/").await.0, 200, "request {}", i + 5);
    }
    assert_eq!(only.answered(), 11);

    // The status page and the metrics say what happens: down by live traffic, tried anyway.
    let s = status_json(&lb).await;
    let j = backend(&s, "only");
    assert_eq!(
        (j["state"].as_str(), j["down_by"].as_str(), j["in_rotation"].as_bool()),
        (Some("down"), Some("traffic"), Some(true))
    );
    assert_eq!(s["pools"][0]["backends_up"], 0);
    assert_eq!(gauge(&lb, "lb_backend_up", "only").await, Some(0.0));
    assert_eq!(gauge(&lb, "lb_backend_in_rotation", "only").await, Some(1.0));
    let (_, html, _) = get(&client, lb.admin_addr().unwrap(), "/status").await;
    assert!(html.contains("tried anyway"), "the page says it is tried anyway");
}

/// A mixed pool: one backend down by its active check, the other out by live-traffic failures
/// only. The one its check took down stays out (a real verdict); the other is tried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_down_by_its_check_stays_out_when_the_rest_are_out_by_live_traffic() {
    let sick = Failing::start(false).await;
    let flaky = Flaky::start("flaky", 3).await;
    // Probes once at start, then not for a minute: nothing but live traffic moves flaky.
    let pool = format!(
        "backends = [{{ addr = \"{}\", name = \"sick\" }}, {{ addr = \"{}\", name = \"flaky\" }}]\n\
         [pools.app.health]\nkind = \"http\"\npath = \"/health\"\ninterval = \"60s\"\ntimeout = \"1s\"\nrise = 1\nfall = 1\n",
        sick.addr, flaky.addr
    );
    let lb = start_lb(&lb_toml(&pool)).await;
    let web = lb.listener_addr("web").unwrap();
    status_until(&lb, "first probes done", |s| {
        let j = backend(s, "sick");
        j["state"] == "down" && j["in_rotation"] != true && backend(s, "flaky")["last_check"]["result"] == "success"
    })
    .await;

    // fall = 1: the first reset takes flaky out; with nothing else to try, the next two
    // requests are still sent to it (and reset), then it answers.
    let client = client();
    for i in 0..3 {
        assert_eq!(get(&client, web, "/").await.0, 502, "request {i}");
    }
    assert_eq!(flaky.resets(), 3);
    status_until(&lb, "the resets took flaky out", |s| backend(s, "flaky")["state"] == "down").await;
    for i in 0..10 {
        let (status, body, _) = get(&client, web, "/").await;
        assert_eq!((status.as_u16(), body.as_str()), (200, "flaky"), "request {}", i + 4);
    }
    assert_eq!(sick.hits(), 0, "a backend its check took down got requests");

    let s = status_json(&lb).await;
    let (j, f) = (backend(&s, "sick"), backend(&s, "flaky"));
    assert_eq!(
        (j["state"].as_str(), j["down_by"].as_str(), j["in_rotation"].as_bool()),
        (Some("down"), Some("check"), Some(false))
    );
    assert_eq!(
        (f["state"].as_str(), f["down_by"].as_str(), f["in_rotation"].as_bool()),
        (Some("down"), Some("traffic"), Some(true))
    );
}
