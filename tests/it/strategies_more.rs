//! End-to-end tests of `consistent_hash` and `least_time` through real sockets: real backends,
//! real lb, real clients on 127.0.0.1 (TCP clients also from other 127.0.0.0/8 addresses, to
//! be different client IPs). Plus `--check` on their options through the real binary.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};

use crate::support::lbproc::{check_config, Checked};
use crate::support::*;

fn http_config(pool: &str) -> String {
    format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\n[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n\n[pools.app]\n{pool}\n"
    )
}

/// GET `path` with extra headers → (status, body).
async fn get_with(client: &Client, addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (StatusCode, String) {
    let mut request = Request::get(format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = client.request(request.body(Empty::new()).unwrap()).await.expect("request reached lb");
    let status = response.status();
    let body = response.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// `lb_requests_total` per backend (all listeners and codes), from the admin listener.
async fn requests_by_backend(lb: &lb::app::Running) -> BTreeMap<String, f64> {
    let (status, text, _) = get(&client(), lb.admin_addr().unwrap(), "/metrics").await;
    assert_eq!(status, 200);
    let mut counts = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("lb_requests_total{")) {
        let (labels, value) = line.rsplit_once(' ').unwrap();
        let backend = labels.split("backend=\"").nth(1).and_then(|rest| rest.split('"').next()).unwrap_or("");
        *counts.entry(backend.to_owned()).or_default() += value.parse::<f64>().unwrap();
    }
    counts
}

/// Which backend (by name) each key goes to, `rounds` times over; asserts every answer is a 200
/// and that each key always got the same backend.
async fn owners(client: &Client, addr: SocketAddr, keys: &[String], rounds: usize) -> BTreeMap<String, String> {
    let mut owners: BTreeMap<String, String> = BTreeMap::new();
    for _ in 0..rounds {
        for key in keys {
            let cookie = format!("theme=dark; sid={key}");
            let (status, body) = get_with(client, addr, "/", &[("cookie", &cookie)]).await;
            assert_eq!(status, 200, "key {key}: {body}");
            let owner = owners.entry(key.clone()).or_insert_with(|| body.clone());
            assert_eq!(*owner, body, "key {key} moved between {owner} and {body} with the pool unchanged");
        }
    }
    owners
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_sends_each_key_to_one_backend() {
    let b = [TestBackend::start("a").await, TestBackend::start("b").await, TestBackend::start("c").await];
    let pool = format!(
        "strategy = \"consistent_hash\"\nhash_key = \"header:X-User\"\n{}",
        backends_toml(&[&b[0], &b[1], &b[2]])
    );
    let lb = start_lb(&http_config(&pool)).await;
    let addr = lb.listener_addr("web").unwrap();
    let client = client();
    let mut owner: HashMap<String, String> = HashMap::new();
    for round in 0..3 {
        for user in 0..100 {
            let user = format!("user-{user}");
            let (status, body) = get_with(&client, addr, "/", &[("x-user", &user)]).await;
            assert_eq!(status, 200);
            let first = owner.entry(user.clone()).or_insert_with(|| body.clone());
            assert_eq!(*first, body, "round {round}: {user} moved");
        }
    }
    // 100 keys over three equal backends: each gets a fair part (expected 33, sd ~4.7).
    for backend in &b {
        let keys = owner.values().filter(|name| **name == backend.name).count();
        assert!((15..=55).contains(&keys), "{} owns {keys} of 100 keys", backend.name);
    }
    // Without the header the key falls back to the client IP: one backend for all of them.
    let mut without: BTreeSet<String> = BTreeSet::new();
    for _ in 0..20 {
        without.insert(get(&client, addr, "/").await.1);
    }
    assert_eq!(without.len(), 1, "{without:?}");
    // Reported in metrics like any strategy: per backend, exactly what each one served.
    let counted = requests_by_backend(&lb).await;
    for backend in &b {
        assert_eq!(counted.get(&backend.name).copied(), Some(backend.hits() as f64), "{counted:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_moves_only_a_down_backends_keys_and_brings_them_back() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let c = TestBackend::start("c").await;
    let pool = format!(
        "strategy = \"consistent_hash\"\nhash_key = \"cookie:sid\"\n{}\n\n[pools.app.health]\nkind = \"http\"\npath = \"/health\"\ninterval = \"50ms\"\ntimeout = \"40ms\"\nrise = 1\nfall = 1\n",
        backends_toml(&[&a, &b, &c])
    );
    let lb = start_lb(&http_config(&pool)).await;
    let addr = lb.listener_addr("web").unwrap();
    let client = client();
    let keys: Vec<String> = (0..300).map(|i| format!("session-{i}")).collect();
    let before = owners(&client, addr, &keys, 2).await;
    let of_b = before.values().filter(|o| *o == "b").count();
    assert!(of_b > 50, "b owns only {of_b} of 300 keys");

    // b goes down: its keys fail over (no client sees an error) and, once it is out of
    // rotation, are spread over a and c. Keys of a and c stay where they were, nearly all.
    b.kill();
    assert!(eventually(Duration::from_secs(5), || up_names(&lb, "app") == ["a", "c"]).await);
    let during = owners(&client, addr, &keys, 2).await;
    let mut others_moved = 0;
    for key in &keys {
        if before[key] == "b" {
            assert_ne!(during[key], "b");
        } else if before[key] != during[key] {
            others_moved += 1;
        }
    }
    assert!(others_moved * 20 <= keys.len() - of_b, "{others_moved} keys of a and c moved");
    let b_keys_to: BTreeSet<&String> = keys.iter().filter(|k| before[*k] == "b").map(|k| &during[k]).collect();
    assert_eq!(b_keys_to.len(), 2, "b's keys should spread over a and c: {b_keys_to:?}");

    // b returns on the same address: the table is rebuilt as it was, and so is every owner.
    let b2 = TestBackend::start_on("b", b.addr).await;
    assert!(eventually(Duration::from_secs(5), || up_names(&lb, "app") == ["a", "b", "c"]).await);
    let after = owners(&client, addr, &keys, 1).await;
    assert_eq!(after, before);
    assert!(b2.hits() >= of_b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_moves_about_one_nth_of_the_keys_when_a_reload_adds_a_backend() {
    let b = [
        TestBackend::start("a").await,
        TestBackend::start("b").await,
        TestBackend::start("c").await,
        TestBackend::start("d").await,
    ];
    let config = |key: &str, backends: &[&TestBackend]| {
        let pool = format!("strategy = \"consistent_hash\"\nhash_key = \"{key}\"\n{}", backends_toml(backends));
        lb::config::parse(std::path::Path::new("lb.toml"), &http_config(&pool)).unwrap().config
    };
    let mut lb = lb::app::Running::start(config("cookie:sid", &[&b[0], &b[1], &b[2]])).await.unwrap();
    let addr = lb.listener_addr("web").unwrap();
    let client = client();
    let keys: Vec<String> = (0..400).map(|i| format!("session-{i}")).collect();
    let before = owners(&client, addr, &keys, 1).await;

    // The same file again: nothing moves.
    lb.apply(config("cookie:sid", &[&b[0], &b[1], &b[2]])).unwrap();
    assert_eq!(owners(&client, addr, &keys, 1).await, before);

    // A fourth backend: about a quarter of the keys move, all of them to it.
    let changes = lb.apply(config("cookie:sid", &[&b[0], &b[1], &b[2], &b[3]])).unwrap();
    assert!(changes.items.iter().any(|c| c.contains("backend d added")), "{changes:?}");
    let after = owners(&client, addr, &keys, 1).await;
    let moved: Vec<&String> = keys.iter().filter(|k| before[*k] != after[*k]).collect();
    assert!(moved.len() * 100 <= keys.len() * (25 + 5), "{} of {} keys moved", moved.len(), keys.len());
    assert!(moved.len() * 100 >= keys.len() * 15, "only {} of {} keys moved to d", moved.len(), keys.len());
    let to_d = moved.iter().filter(|k| after[**k] == "d").count();
    assert!(to_d * 10 >= moved.len() * 9, "{to_d} of {} moved keys went to d", moved.len());

    // Changing what is hashed is a strategy change, and the reload summary says so.
    let changes = lb.apply(config("header:x-user", &[&b[0], &b[1], &b[2], &b[3]])).unwrap();
    let expected = "strategy consistent_hash(hash_key=cookie:sid) -> consistent_hash(hash_key=header:x-user)";
    assert!(changes.items.iter().any(|c| c.contains(expected)), "{changes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_bounds_a_hot_keys_load() {
    let b = [TestBackend::start("a").await, TestBackend::start("b").await, TestBackend::start("c").await];
    let pool = format!(
        "strategy = \"consistent_hash\"\nhash_key = \"query:id\"\nhash_balance_factor = 1.5\n{}",
        backends_toml(&[&b[0], &b[1], &b[2]])
    );
    let lb = start_lb(&http_config(&pool)).await;
    let addr = lb.listener_addr("web").unwrap();
    // One hot key, 12 slow requests at once: at most ceil(1.5 · 12 / 3) = 6 on any backend.
    let mut tasks = Vec::new();
    for _ in 0..12 {
        tasks.push(tokio::spawn(async move { get(&client(), addr, "/slow/400?id=hot").await.1 }));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut served: BTreeMap<String, usize> = BTreeMap::new();
    for task in tasks {
        *served.entry(task.await.unwrap()).or_default() += 1;
    }
    assert!(served.values().all(|&n| n <= 6), "{served:?}");
    assert!(served.len() >= 2, "{served:?}");
    // When nothing is in flight the key is sticky again: always its own backend.
    let alone: BTreeSet<String> = {
        let client = client();
        let mut seen = BTreeSet::new();
        for _ in 0..10 {
            seen.insert(get(&client, addr, "/?id=hot").await.1);
        }
        seen
    };
    assert_eq!(alone.len(), 1, "{alone:?}");
    let pool = lb.pool("app").unwrap().load_full();
    assert_eq!(pool.cursor.in_flight.load(Ordering::Relaxed), 0);
}

/// Sends an HTTP/1.1 request over a fresh TCP connection from `source` and returns the name of
/// the backend that answered.
async fn tcp_session_from(source: [u8; 4], lb: SocketAddr) -> String {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    let mut stream = socket.connect(lb).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut answer)).await.unwrap().unwrap();
    let served_by = answer.lines().find_map(|l| l.strip_prefix("x-served-by: ")).map(str::trim);
    served_by.unwrap_or_else(|| panic!("no x-served-by in {answer:?}")).to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_in_tcp_mode_hashes_the_client_ip() {
    let b = [TestBackend::start("a").await, TestBackend::start("b").await, TestBackend::start("c").await];
    let toml = format!(
        "[[listeners]]\nname = \"raw\"\nbind = \"127.0.0.1:0\"\nmode = \"tcp\"\npool = \"app\"\n\n[pools.app]\nstrategy = \"consistent_hash\"\n{}\n",
        backends_toml(&[&b[0], &b[1], &b[2]])
    );
    let lb = start_lb(&toml).await;
    let addr = lb.listener_addr("raw").unwrap();
    let mut owner: BTreeMap<u8, String> = BTreeMap::new();
    for round in 0..3 {
        for host in 1..=40u8 {
            let name = tcp_session_from([127, 0, 0, host], addr).await;
            let first = owner.entry(host).or_insert_with(|| name.clone());
            assert_eq!(*first, name, "round {round}: client 127.0.0.{host} moved");
        }
    }
    let used: BTreeSet<&String> = owner.values().collect();
    assert_eq!(used.len(), 3, "40 client IPs should reach all three backends: {owner:?}");
}

/// A backend that answers every request after a fixed delay with its name, or, once told to
/// fail, at once with 503.
struct TimedBackend {
    name: String,
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
}

impl TimedBackend {
    async fn start(name: &str, delay: Duration) -> TimedBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = TimedBackend {
            name: name.to_owned(),
            addr: listener.local_addr().unwrap(),
            hits: Arc::default(),
            failing: Arc::default(),
        };
        let (name, hits, failing) = (backend.name.clone(), backend.hits.clone(), backend.failing.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (name, hits, failing) = (name.clone(), hits.clone(), failing.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_request| {
                        let (name, hits, failing) = (name.clone(), hits.clone(), failing.clone());
                        async move {
                            hits.fetch_add(1, Ordering::SeqCst);
                            if failing.load(Ordering::SeqCst) {
                                let mut response = Response::new(Full::new(Bytes::from("failing")));
                                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                                return Ok::<_, Infallible>(response);
                            }
                            tokio::time::sleep(delay).await;
                            Ok(Response::new(Full::new(Bytes::from(name))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        backend
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn toml(backends: &[&TimedBackend]) -> String {
        let items: Vec<String> =
            backends.iter().map(|b| format!("{{ addr = \"{}\", name = \"{}\" }}", b.addr, b.name)).collect();
        format!("backends = [{}]", items.join(", "))
    }
}

async fn three_timed() -> [TimedBackend; 3] {
    [
        TimedBackend::start("fast", Duration::ZERO).await,
        TimedBackend::start("medium", Duration::from_millis(20)).await,
        TimedBackend::start("slow", Duration::from_millis(80)).await,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_time_sends_most_requests_to_the_fastest_backend() {
    let b = three_timed().await;
    let pool = format!("strategy = \"least_time\"\n{}", TimedBackend::toml(&[&b[0], &b[1], &b[2]]));
    let lb = start_lb(&http_config(&pool)).await;
    let addr = lb.listener_addr("web").unwrap();
    get_concurrently(addr, 4, 100).await;
    let hits = [b[0].hits(), b[1].hits(), b[2].hits()];
    assert_eq!(hits.iter().sum::<usize>(), 400);
    assert!(hits[0] * 100 >= 70 * 400, "fast got {} of 400 ({hits:?})", hits[0]);
    // Reported in metrics, and every backend has an estimate once it has answered.
    let counted = requests_by_backend(&lb).await;
    assert_eq!(counted.get("fast").copied(), Some(hits[0] as f64), "{counted:?}");
    let pool = lb.pool("app").unwrap().load_full();
    assert!(pool.backends.iter().all(|x| x.latency().estimate().is_some() && x.in_flight() == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_time_stops_sending_to_a_backend_that_fails_fast() {
    let b = three_timed().await;
    let pool =
        format!("strategy = \"least_time\"\nrequest_timeout = \"30s\"\n{}", TimedBackend::toml(&[&b[0], &b[1], &b[2]]));
    let lb = start_lb(&http_config(&pool)).await;
    let addr = lb.listener_addr("web").unwrap();
    let client = client();
    for _ in 0..100 {
        assert_eq!(get(&client, addr, "/").await.0, 200);
    }
    assert!(b[0].hits() >= 70, "fast got {} of 100", b[0].hits());
    // The fast backend starts answering 503 at once. A 5xx counts as a try as slow as
    // request_timeout (30 s), blended in by elapsed time: within milliseconds of its own
    // traffic it costs more than the 20 ms backend and gets (almost) nothing.
    b[0].failing.store(true, Ordering::SeqCst);
    let mut failures = Vec::new();
    for i in 0..200 {
        let (status, _) = get_with(&client, addr, "/", &[]).await;
        if status != 200 {
            assert_eq!(status, 503);
            failures.push(i);
        }
    }
    assert!(failures.len() <= 40, "{} of 200 requests still went to the failing backend", failures.len());
    let late = failures.iter().filter(|&&i| i >= 100).count();
    assert!(late <= 1, "failing backend still chosen late: {failures:?}");
    // The traffic went to the next fastest.
    assert!(b[1].hits() > b[2].hits(), "medium {} vs slow {}", b[1].hits(), b[2].hits());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_time_in_tcp_mode_times_connects() {
    let b = [TestBackend::start("a").await, TestBackend::start("b").await];
    let toml = format!(
        "[[listeners]]\nname = \"raw\"\nbind = \"127.0.0.1:0\"\nmode = \"tcp\"\npool = \"app\"\n\n[pools.app]\nstrategy = \"least_time\"\n{}\n",
        backends_toml(&[&b[0], &b[1]])
    );
    let lb = start_lb(&toml).await;
    let addr = lb.listener_addr("raw").unwrap();
    for _ in 0..10 {
        tcp_session_from([127, 0, 0, 1], addr).await;
    }
    assert_eq!(b[0].hits() + b[1].hits(), 10);
    let pool = lb.pool("app").unwrap().load_full();
    for backend in &pool.backends {
        let estimate = backend.latency().estimate().expect("connect times recorded");
        assert!(estimate < Duration::from_secs(1), "{}: {estimate:?}", backend.name);
    }
}

fn pool_file(mode: &str, pool_lines: &str) -> String {
    format!(
        "[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:8080\"\nmode = \"{mode}\"\npool = \"app\"\n\n[pools.app]\n{pool_lines}\nbackends = [{{ addr = \"127.0.0.1:9001\" }}, {{ addr = \"127.0.0.1:9002\", weight = 3 }}]\n"
    )
}

#[test]
fn check_accepts_the_new_strategies_and_their_options() {
    for (name, lines) in [
        ("least-time", "strategy = \"least_time\""),
        ("ch-default", "strategy = \"consistent_hash\""),
        ("ch-header", "strategy = \"consistent_hash\"\nhash_key = \"header:X-User\"\nhash_balance_factor = 1.25"),
        ("ch-cookie", "strategy = \"consistent_hash\"\nhash_key = \"cookie:sid\"\nhash_balance_factor = 2"),
        ("ch-uri", "strategy = \"consistent_hash\"\nhash_key = \"uri\""),
        ("ch-query", "strategy = \"consistent_hash\"\nhash_key = \"query:id\""),
        ("ch-ip", "strategy = \"consistent_hash\"\nhash_key = \"client_ip\""),
    ] {
        let Checked { ok, stdout, stderr, .. } = check_config(&pool_file("http", lines));
        assert!(ok, "{name}: rejected: {stderr}");
        assert!(stderr.is_empty(), "{name}: unexpected warning: {stderr}");
        assert!(stdout.contains("1 pool(s), 2 backend(s)"), "{name}: {stdout}");
    }
}

#[test]
fn check_rejects_bad_hash_options_with_their_location() {
    let cases = [
        ("unknown-form", "strategy = \"consistent_hash\"\nhash_key = \"path:x\"", 9, "unknown hash_key \"path:x\""),
        ("no-name", "strategy = \"consistent_hash\"\nhash_key = \"cookie:\"", 9, "needs a name"),
        ("bad-header", "strategy = \"consistent_hash\"\nhash_key = \"header:x user\"", 9, "not a valid header name"),
        ("factor-one", "strategy = \"consistent_hash\"\nhash_balance_factor = 1.0", 9, "above 1.0"),
        ("factor-low", "strategy = \"consistent_hash\"\nhash_balance_factor = 0.5", 9, "above 1.0"),
        ("key-elsewhere", "strategy = \"least_time\"\nhash_key = \"client_ip\"", 9, "hash_key only applies"),
        (
            "factor-elsewhere",
            "strategy = \"round_robin\"\n\nhash_balance_factor = 1.5",
            10,
            "hash_balance_factor only applies",
        ),
        ("unknown-strategy", "strategy = \"maglev\"", 8, "unknown variant `maglev`"),
    ];
    for (name, lines, line, needle) in cases {
        let Checked { ok, stdout, stderr, path } = check_config(&pool_file("http", lines));
        assert!(!ok, "{name}: accepted: {stdout}");
        assert!(stderr.starts_with(&format!("{path}:{line}:")), "{name}: wrong location: {stderr}");
        assert!(stderr.contains(needle), "{name}: expected {needle:?} in {stderr}");
    }
    // The list of known strategies includes the new ones.
    let stderr = check_config(&pool_file("http", "strategy = \"maglev\"")).stderr;
    assert!(stderr.contains("`consistent_hash`") && stderr.contains("`least_time`"), "{stderr}");
}

#[test]
fn check_warns_when_a_tcp_listener_cannot_have_the_hash_key() {
    let lines = "strategy = \"consistent_hash\"\nhash_key = \"header:x-user\"";
    let Checked { ok, stderr, path, .. } = check_config(&pool_file("tcp", lines));
    assert!(ok, "{stderr}");
    assert!(stderr.starts_with(&format!("{path}:5:")), "{stderr}");
    assert!(stderr.contains("warning") && stderr.contains("hashed on the client IP"), "{stderr}");
    let Checked { ok, stderr, .. } = check_config(&pool_file("tcp", "strategy = \"consistent_hash\""));
    assert!(ok && stderr.is_empty(), "{stderr}");
}
