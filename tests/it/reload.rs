//! Reload (SIGHUP) on the real process: a reload under load fails no request, in-flight
//! requests and open connections survive it, a broken file or a failed bind changes nothing,
//! and listeners are added, removed, moved and renamed without a restart.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;

use crate::support::lbproc::*;
use crate::support::*;

async fn backends<const N: usize>(names: [&str; N]) -> Vec<TestBackend> {
    let mut v = Vec::new();
    for n in names {
        v.push(TestBackend::start(n).await);
    }
    v
}

fn web(pool: &str) -> String {
    listener("web", "127.0.0.1:0", "http", pool)
}

/// Sends `n` requests on fresh connections and returns who answered.
async fn answers(addr: std::net::SocketAddr, n: usize) -> Vec<String> {
    let mut who = Vec::new();
    for _ in 0..n {
        let mut c = Conn::open(addr).await;
        let (status, body) = c.get("/").await.expect("request answered");
        assert_eq!(status, 200, "{body}");
        who.push(body);
    }
    who
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_every_100ms_under_load_fails_no_request() {
    let b = backends(["a", "b", "c", "d"]).await;
    // Backend sets, strategies, weights, timeouts and listener settings all change.
    let configs: Vec<String> = (0..4)
        .map(|k| {
            let listener = if k % 2 == 0 { web("app") } else { format!("{}idle_timeout = \"50s\"\n\n", web("app")) };
            let pool = match k {
                0 => pool_w("app", "round_robin", &[(&b[0], 1), (&b[1], 1)], ""),
                1 => pool_w("app", "weighted", &[(&b[1], 1), (&b[2], 3)], "request_timeout = \"20s\""),
                2 => pool_w(
                    "app",
                    "least_connections",
                    &[(&b[2], 2), (&b[3], 1)],
                    "connect_timeout = \"1s\"\nretries = 1",
                ),
                _ => pool_w("app", "random", &[(&b[3], 1), (&b[0], 1)], "request_timeout = \"25s\""),
            };
            format!("{listener}{pool}")
        })
        .collect();
    let lb = Lb::start(&configs[0], &[]).await;
    let addr = lb.listener_addr(0, "web").await;

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for i in 0..8 {
        let (stop, done) = (stop.clone(), done.clone());
        clients.push(tokio::spawn(async move {
            let names = ["a", "b", "c", "d"];
            let mut failures: Vec<String> = Vec::new();
            let mut check = |r: Result<(u16, String), String>| match r {
                Ok((200, body)) if names.contains(&body.as_str()) => {
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok((status, body)) => failures.push(format!("{status} {body}")),
                Err(e) => failures.push(e),
            };
            // Half the clients use the pooled client, half one explicit connection each, which
            // must stay usable across every reload.
            let pooled = client();
            let mut conn = if i % 2 == 1 { Some(Conn::open(addr).await) } else { None };
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                // Some requests are slow, so that reloads land while they are in flight.
                let path = if n.is_multiple_of(4) { "/slow/30" } else { "/" };
                n += 1;
                match &mut conn {
                    Some(c) => check(c.get(path).await),
                    None => {
                        let uri = format!("http://{addr}{path}").parse().unwrap();
                        let r = match pooled.get(uri).await {
                            Ok(resp) => {
                                let status = resp.status().as_u16();
                                match resp.into_body().collect().await {
                                    Ok(b) => Ok((status, String::from_utf8_lossy(&b.to_bytes()).into_owned())),
                                    Err(e) => Err(e.to_string()),
                                }
                            }
                            Err(e) => Err(format!("{e:?}")),
                        };
                        check(r)
                    }
                }
            }
            failures
        }));
    }
    wait_until("clients running", || done.load(Ordering::Relaxed) >= 16).await;

    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for i in 1..=40 {
        tick.tick().await;
        let line = lb.reload(&configs[i % 4]).await.unwrap_or_else(|e| {
            panic!("reload {i} rejected: {e}");
        });
        // The summary names what changed.
        assert!(line.contains("backend"), "{line}");
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for c in clients {
        failures.extend(c.await.unwrap());
    }
    let total = done.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        total + failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(total > 40, "only {total} requests were made");
    eprintln!("{total} requests across 40 reloads, none failed");

    // The last configuration (index 40 % 4 = 0) is a and b: c and d get nothing any more.
    let (c_hits, d_hits) = (b[2].hits(), b[3].hits());
    let who: HashSet<String> = answers(addr, 20).await.into_iter().collect();
    assert_eq!(who, HashSet::from(["a".to_owned(), "b".to_owned()]));
    assert_eq!((b[2].hits(), b[3].hits()), (c_hits, d_hits));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_across_a_reload_complete() {
    let b = backends(["a", "b"]).await;
    let lb = Lb::start(&format!("{}{}", web("app"), pool("app", "round_robin", &[&b[0]], "")), &[]).await;
    let addr = lb.listener_addr(0, "web").await;

    let mut kept = Conn::open(addr).await;
    assert_eq!(kept.get("/").await.unwrap(), (200, "a".into()));
    // A 2 s request waiting for its response head, and a response whose body is streaming.
    let slow = tokio::spawn(async move { Conn::open(addr).await.get("/slow/2000").await });
    let mut streaming = Conn::open(addr).await;
    let resp = streaming.head("/stream").await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    assert_eq!(read_until(&mut body, "first;").await.unwrap(), "first;");
    wait_until("the slow request reached a", || b[0].hits() == 3).await;

    // a leaves the configuration, b replaces it.
    let line = lb.reload(&format!("{}{}", web("app"), pool("app", "round_robin", &[&b[1]], ""))).await.unwrap();
    assert!(line.contains("backend a removed") && line.contains("backend b added"), "{line}");

    // The same client connection goes on, now to b.
    assert_eq!(kept.get("/").await.unwrap(), (200, "b".into()));
    assert_eq!(answers(addr, 3).await, ["b", "b", "b"]);
    // What a had in flight finishes there.
    b[0].release();
    assert_eq!(read_until(&mut body, "second").await.unwrap(), "second");
    assert!(body.frame().await.is_none(), "stream did not end cleanly");
    assert_eq!(slow.await.unwrap().unwrap(), (200, "a".into()));
    assert_eq!(b[0].hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_session_survives_a_reload_that_removes_its_backend() {
    let b = backends(["a", "b"]).await;
    let cfg = |backend: &TestBackend| {
        format!("{}{}", listener("l4", "127.0.0.1:0", "tcp", "app"), pool("app", "round_robin", &[backend], ""))
    };
    let lb = Lb::start(&cfg(&b[0]), &[]).await;
    let addr = lb.listener_addr(0, "l4").await;
    let req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut session = tokio::net::TcpStream::connect(addr).await.unwrap();
    session.write_all(req).await.unwrap();
    assert!(read_raw_until(&mut session, "\r\n\r\na").await.contains("x-served-by: a"));

    lb.reload(&cfg(&b[1])).await.unwrap();
    // The open session still talks to a; a new one goes to b.
    session.write_all(req).await.unwrap();
    assert!(read_raw_until(&mut session, "\r\n\r\na").await.contains("x-served-by: a"));
    let mut fresh = tokio::net::TcpStream::connect(addr).await.unwrap();
    fresh.write_all(req).await.unwrap();
    assert!(read_raw_until(&mut fresh, "\r\n\r\nb").await.contains("x-served-by: b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_config_on_sighup_keeps_the_running_one_and_logs_where() {
    let b = backends(["a", "b"]).await;
    let good = |backend: &TestBackend| format!("{}{}", web("app"), pool("app", "round_robin", &[backend], ""));
    let lb = Lb::start(&good(&b[0]), &[]).await;
    let addr = lb.listener_addr(0, "web").await;
    let path = lb.config.display().to_string();
    let mut kept = Conn::open(addr).await;
    assert_eq!(kept.get("/").await.unwrap(), (200, "a".into()));

    // A TOML syntax error on line 3.
    let syntax = "[[listeners]]\nname = \"web\"\nbind = = \"127.0.0.1:0\"\n";
    let err = lb.reload(syntax).await.unwrap_err();
    assert!(err.contains(&format!("{path}:3:")), "{err}");

    // A meaning error (unknown strategy), located at its value, in an otherwise changed file.
    let unknown = good(&b[1]).replace("round_robin", "fastest");
    let (line, col) =
        unknown.lines().enumerate().find_map(|(i, l)| l.find("\"fastest\"").map(|c| (i + 1, c + 1))).unwrap();
    let err = lb.reload(&unknown).await.unwrap_err();
    assert!(err.contains(&format!("{path}:{line}:{col}: ")), "{err}");
    assert!(err.contains("fastest"), "{err}");

    // A listener naming a pool that does not exist.
    let missing = good(&b[1]).replace("pool = \"app\"", "pool = \"nope\"");
    let err = lb.reload(&missing).await.unwrap_err();
    let line = missing.lines().position(|l| l.contains("\"nope\"")).unwrap() + 1;
    assert!(err.contains(&format!("{path}:{line}:")), "{err}");

    // Still the old configuration, on old and new connections alike.
    assert_eq!(kept.get("/").await.unwrap(), (200, "a".into()));
    assert_eq!(answers(addr, 3).await, ["a", "a", "a"]);
    assert_eq!(b[1].hits(), 0);

    // Fixing the file and reloading again works.
    lb.reload(&good(&b[1])).await.unwrap();
    assert_eq!(kept.get("/").await.unwrap(), (200, "b".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_removes_and_moves_listeners() {
    let b = backends(["a", "c"]).await;
    let app = pool("app", "round_robin", &[&b[0]], "");
    let side = pool("side", "round_robin", &[&b[1]], "");
    let lb = Lb::start(&format!("{}{}{app}", web("app"), listener("old", "127.0.0.1:0", "http", "app")), &[]).await;
    let web_addr = lb.listener_addr(0, "web").await;
    let old = lb.listener_addr(0, "old").await;
    let mut on_old = Conn::open(old).await;
    assert_eq!(on_old.get("/").await.unwrap(), (200, "a".into()));

    // Remove "old", add "new" (on another pool).
    let mark = lb.mark();
    let line = lb
        .reload(&format!("{}{}{app}{side}", web("app"), listener("new", "127.0.0.1:0", "http", "side")))
        .await
        .unwrap();
    assert!(line.contains("listener new added") && line.contains("listener old removed"), "{line}");
    let new = lb.listener_addr(mark, "new").await;
    assert_eq!(answers(new, 2).await, ["c", "c"]);
    wait_refused(old).await;
    // A connection accepted before the removal is not cut.
    assert_eq!(on_old.get("/").await.unwrap(), (200, "a".into()));
    assert_eq!(answers(web_addr, 2).await, ["a", "a"]);

    // Move "new" to another port.
    let port = free_ports(1)[0];
    let moved = format!("127.0.0.1:{port}");
    let line =
        lb.reload(&format!("{}{}{app}{side}", web("app"), listener("new", &moved, "http", "side"))).await.unwrap();
    assert!(line.contains("listener new moved"), "{line}");
    assert_eq!(answers(moved.parse().unwrap(), 2).await, ["c", "c"]);
    wait_refused(new).await;
    assert_eq!(answers(web_addr, 1).await, ["a"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_whose_listener_bind_fails_applies_nothing() {
    let b = backends(["a", "b"]).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let lb = Lb::start(
        &format!(
            "{}{}{}",
            web("app"),
            listener("extra", "127.0.0.1:0", "http", "app"),
            pool("app", "round_robin", &[&b[0]], "")
        ),
        &[],
    )
    .await;
    let web_addr = lb.listener_addr(0, "web").await;
    let extra = lb.listener_addr(0, "extra").await;

    // New backends, "extra" removed, and a new listener on a port the test holds.
    let next = format!(
        "{}{}{}",
        web("app"),
        listener("blocked", &taken_addr.to_string(), "http", "app"),
        pool("app", "round_robin", &[&b[1]], "")
    );
    let err = lb.reload(&next).await.unwrap_err();
    assert!(err.contains("cannot bind") && err.contains(&taken_addr.to_string()), "{err}");
    // Nothing of it was applied.
    assert_eq!(answers(web_addr, 3).await, ["a", "a", "a"]);
    assert_eq!(answers(extra, 1).await, ["a"]);
    assert_eq!(b[1].hits(), 0);

    // Once the port is free, the same file applies as a whole.
    drop(taken);
    lb.hup().await.unwrap();
    assert_eq!(answers(web_addr, 2).await, ["b", "b"]);
    assert_eq!(answers(taken_addr, 1).await, ["b"]);
    wait_refused(extra).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_can_rename_listeners_and_swap_their_addresses() {
    let b = backends(["a", "b"]).await;
    let ports = free_ports(2);
    let (p1, p2) = (format!("127.0.0.1:{}", ports[0]), format!("127.0.0.1:{}", ports[1]));
    let pools = format!("{}{}", pool("app", "round_robin", &[&b[0]], ""), pool("other", "round_robin", &[&b[1]], ""));
    let lb = Lb::start(
        &format!("{}{}{pools}", listener("web", &p1, "http", "app"), listener("side", &p2, "http", "other")),
        &[],
    )
    .await;
    let (a1, a2) = (p1.parse().unwrap(), p2.parse().unwrap());
    assert_eq!(answers(a1, 1).await, ["a"]);
    let mut kept = Conn::open(a1).await;
    assert_eq!(kept.get("/").await.unwrap(), (200, "a".into()));

    // "web" renamed "front" on the same address: the socket is kept, not bound twice.
    let line = lb
        .reload(&format!("{}{}{pools}", listener("front", &p1, "http", "app"), listener("side", &p2, "http", "other")))
        .await
        .unwrap_or_else(|e| panic!("rename rejected: {e}"));
    assert!(line.contains("listener front added"), "{line}");
    assert_eq!(answers(a1, 2).await, ["a", "a"]);
    assert_eq!(kept.get("/").await.unwrap(), (200, "a".into()));

    // The two listeners swap addresses.
    lb.reload(&format!("{}{}{pools}", listener("front", &p2, "http", "app"), listener("side", &p1, "http", "other")))
        .await
        .unwrap_or_else(|e| panic!("swap rejected: {e}"));
    assert_eq!(answers(a2, 2).await, ["a", "a"]);
    assert_eq!(answers(a1, 2).await, ["b", "b"]);
}

/// In-process: the pool snapshot after a reload still counts what a kept backend has in
/// flight, and a removed backend's request finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_backend_keeps_its_in_flight_count() {
    let b = backends(["a", "b", "c"]).await;
    let cfg = |pool: String| format!("{}{pool}", web("app"));
    let mut lb = start_lb(&cfg(pool_w("app", "round_robin", &[(&b[0], 1), (&b[1], 1)], ""))).await;
    let addr = lb.listener_addr("web").unwrap();
    let mut streams = Vec::new();
    for _ in 0..2 {
        let mut c = Conn::open(addr).await;
        let resp = c.head("/stream").await.unwrap();
        let who = resp.headers()["x-served-by"].to_str().unwrap().to_owned();
        let mut body = resp.into_body();
        assert_eq!(read_until(&mut body, "first;").await.unwrap(), "first;");
        streams.push((c, who, body));
    }
    let mut who: Vec<&str> = streams.iter().map(|s| s.1.as_str()).collect();
    who.sort();
    assert_eq!(who, ["a", "b"]);
    let removed = lb.pool("app").unwrap().load().backends[1].clone();
    assert_eq!(removed.name, "b");

    // a kept under a new weight, b removed, c added.
    let next = cfg(pool_w("app", "least_connections", &[(&b[0], 2), (&b[2], 1)], ""));
    let loaded = lb::config::parse(std::path::Path::new("lb.toml"), &next).unwrap();
    lb.apply(loaded.config).unwrap();
    let snap = lb.pool("app").unwrap().load_full();
    let in_flight: Vec<(&str, usize)> = snap.backends.iter().map(|x| (x.name.as_str(), x.in_flight())).collect();
    assert_eq!(in_flight, [("a", 1), ("c", 0)]);
    assert_eq!(removed.in_flight(), 1);
    // least_connections sees a's request: the next one goes to c.
    assert_eq!(answers(addr, 1).await, ["c"]);

    b[0].release();
    b[1].release();
    for (_c, _, mut body) in streams {
        assert_eq!(read_until(&mut body, "second").await.unwrap(), "second");
    }
    wait_until("in-flight counts drop to 0", || snap.backends[0].in_flight() == 0 && removed.in_flight() == 0).await;
}

/// In-process: a reload (even one that changes nothing) must not hand a listener a fresh set
/// of `max_connections` permits while the old connections still hold theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_the_connection_limit() {
    connection_limit_across_a_reload(false).await;
}

/// The same when the reload renames the listener: the new name takes over the socket, its
/// open connections and the permits they hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_listener_keeps_the_connection_limit() {
    connection_limit_across_a_reload(true).await;
}

async fn connection_limit_across_a_reload(rename: bool) {
    let b = backends(["a"]).await;
    let pool_cfg = pool("app", "round_robin", &[&b[0]], "");
    let cfg = format!("{}max_connections = 1\n\n{pool_cfg}", web("app"));
    let mut lb = start_lb(&cfg).await;
    let addr = lb.listener_addr("web").unwrap();
    let mut c1 = Conn::open(addr).await;
    assert_eq!(c1.get("/").await.unwrap(), (200, "a".into()));

    let next = if rename {
        format!("{}max_connections = 1\n\n{pool_cfg}", listener("front", &addr.to_string(), "http", "app"))
    } else {
        cfg.clone()
    };
    let loaded = lb::config::parse(std::path::Path::new("lb.toml"), &next).unwrap();
    lb.apply(loaded.config).unwrap();
    assert_eq!(lb.listener_addr(if rename { "front" } else { "web" }), Some(addr));

    // c2 and c3 wait in the backlog while c1 is open; closing c1 lets exactly one of them in.
    let mut c2 = Conn::open(addr).await;
    let mut r2 = tokio::spawn(async move { (c2.get("/").await, c2) });
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut r2).await.is_err(),
        "a second connection was served past max_connections = 1 while the first is open"
    );
    let mut c3 = Conn::open(addr).await;
    let mut r3 = tokio::spawn(async move { c3.get("/").await });
    c1.close();
    let (res, c2) = tokio::time::timeout(PATIENCE, r2).await.unwrap().unwrap();
    assert_eq!(res.unwrap(), (200, "a".into()));
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut r3).await.is_err(),
        "a second connection was served past max_connections = 1"
    );
    c2.close();
    let res = tokio::time::timeout(PATIENCE, r3).await.unwrap().unwrap();
    assert_eq!(res.unwrap(), (200, "a".into()));
}

/// A reload that only renames a backend (same pool, same address) keeps what lb knows of it:
/// its request in flight (least_connections relies on it) and its health.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_backend_keeps_its_state() {
    let b = backends(["a"]).await;
    let cfg = |name: &str| {
        format!(
            "{}[pools.app]\nstrategy = \"least_connections\"\nbackends = [{{ addr = \"{}\", name = \"{name}\" }}]\n",
            web("app"),
            b[0].addr
        )
    };
    let mut lb = start_lb(&cfg("old")).await;
    let addr = lb.listener_addr("web").unwrap();
    let mut c = Conn::open(addr).await;
    let mut body = c.head("/stream").await.unwrap().into_body();
    assert_eq!(read_until(&mut body, "first;").await.unwrap(), "first;");
    let before = lb.pool("app").unwrap().load().backends[0].clone();
    assert_eq!((before.name.as_str(), before.in_flight()), ("old", 1));

    lb.apply(lb::config::parse(std::path::Path::new("lb.toml"), &cfg("new")).unwrap().config).unwrap();
    let after = lb.pool("app").unwrap().load().backends[0].clone();
    assert_eq!((after.name.as_str(), after.in_flight()), ("new", 1), "the request in flight was forgotten");
    b[0].release();
    assert_eq!(read_until(&mut body, "second").await.unwrap(), "second");
    wait_until("the in-flight count drops to 0", || after.in_flight() == 0).await;
}
