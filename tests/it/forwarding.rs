//! Forwarding promises of SPEC.md over real sockets: X-Forwarded-*, hop-by-hop removal both
//! ways, HTTP/2 (h2c) clients, WebSocket upgrades, streaming both ways, the proxy's own status
//! codes, failover on connect failure, and the admin /healthz.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

fn config(backends: &str, extra_pool: &str) -> String {
    format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\n[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n\n[pools.app]\nstrategy = \"round_robin\"\n{backends}\n{extra_pool}\n"
    )
}

async fn one_backend() -> (TestBackend, lb::app::Running) {
    let b = TestBackend::start("a").await;
    let lb = start_lb(&config(&backends_toml(&[&b]), "")).await;
    (b, lb)
}

#[tokio::test]
async fn forwarding_headers_reach_the_backend() {
    let (b, lb) = one_backend().await;
    let addr = lb.listener_addr("web").unwrap();
    let resp = raw(
        addr,
        b"GET /x?y=1 HTTP/1.1\r\nHost: shop.example\r\nX-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let seen = b.last_seen();
    assert_eq!(seen.uri, "/x?y=1");
    assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-host"], "shop.example");
    assert_eq!(seen.headers["host"], "shop.example");
}

/// The `X-Request-Id` of a raw answer's head (lowercase lookup).
fn answer_id(resp: &str) -> Option<String> {
    resp.split("\r\n\r\n").next()?.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("x-request-id").then(|| value.trim().to_owned())
    })
}

/// Every request carries an `X-Request-Id` to the backend and back: the client's when it is 1
/// to 200 visible ASCII bytes, else a new 128-bit one (32 hex digits), on lb's own client's
/// path (bodiless) and on hyper's (a body), and on lb's own answers. `traceparent` and
/// `tracestate` pass unchanged.
#[tokio::test]
async fn every_request_carries_a_request_id_both_ways() {
    let (b, lb) = one_backend().await;
    let addr = lb.listener_addr("web").unwrap();
    let is_new = |id: &str| id.len() == 32 && id.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase());
    let long = "a".repeat(201);
    let cases: [(&str, Option<&str>); 5] = [
        ("", None),
        ("X-Request-Id: trace-abc_123.4\r\n", Some("trace-abc_123.4")),
        ("X-Request-Id: has space\r\n", None),
        (&format!("X-Request-Id: {long}\r\n"), None),
        ("X-Request-Id: x\r\nConnection: x-request-id, close\r\n", Some("x")),
    ];
    let mut made = Vec::new();
    for (i, (header, kept)) in cases.iter().enumerate() {
        for body in [false, true] {
            let head = if body { "POST" } else { "GET" };
            let len = if body { "Content-Length: 2\r\n" } else { "" };
            let req = format!(
                "{head} /id{i} HTTP/1.1\r\nHost: h\r\n{header}{len}traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\ntracestate: k=v\r\nConnection: close\r\n\r\n{}",
                if body { "hi" } else { "" }
            );
            let resp = raw(addr, req.as_bytes(), Duration::from_secs(5)).await;
            assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
            let seen = b.last_seen();
            let sent =
                seen.headers.get_all("x-request-id").iter().map(|v| v.to_str().unwrap().to_owned()).collect::<Vec<_>>();
            assert_eq!(sent.len(), 1, "case {i}: {sent:?}");
            let answered = answer_id(&resp).expect("an X-Request-Id in the answer");
            assert_eq!(answered, sent[0], "case {i}: the client got another id than the backend");
            match kept {
                Some(id) => assert_eq!(&sent[0], id, "case {i}"),
                None => {
                    assert!(is_new(&sent[0]), "case {i}: {:?}", sent[0]);
                    made.push(sent[0].clone());
                }
            }
            assert_eq!(seen.headers["traceparent"], "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
            assert_eq!(seen.headers["tracestate"], "k=v");
        }
    }
    made.sort();
    made.dedup();
    assert_eq!(made.len(), 6, "ids made for different requests must differ");
    // lb's own answer (no backend) carries one too.
    let refused = raw(addr, b"GET * HTTP/1.1\r\nHost: h\r\nX-Request-Id: mine\r\n\r\n", Duration::from_secs(5)).await;
    assert!(refused.starts_with("HTTP/1.1 400"), "{refused}");
    assert_eq!(answer_id(&refused).as_deref(), Some("mine"));
}

/// HTTP/1.0 allows a request without Host; HTTP/1.1, which backends get, does not. Such a
/// request names the backend it is sent to, and gets no X-Forwarded-Host.
#[tokio::test]
async fn http10_request_without_host_gets_the_backend_as_host() {
    let (b, lb) = one_backend().await;
    let addr = lb.listener_addr("web").unwrap();
    let resp = raw(addr, b"GET /old HTTP/1.0\r\n\r\n", Duration::from_secs(5)).await;
    assert!(resp.starts_with("HTTP/1.0 200"), "{resp}");
    let seen = b.last_seen();
    assert_eq!(seen.uri, "/old");
    assert_eq!(seen.headers["host"], b.addr.to_string().as_str());
    assert!(seen.headers.get("x-forwarded-host").is_none(), "{:?}", seen.headers);
}

#[tokio::test]
async fn hop_by_hop_request_headers_are_removed() {
    let (b, lb) = one_backend().await;
    let addr = lb.listener_addr("web").unwrap();
    let resp = raw(
        addr,
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X-T\r\nUpgrade: h2c\r\nX-Kept: yes\r\n\r\n",
        Duration::from_millis(500),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let h = b.last_seen().headers;
    for gone in ["connection", "x-secret", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"] {
        assert!(h.get(gone).is_none(), "{gone} reached the backend: {h:?}");
    }
    assert_eq!(h["x-kept"], "yes");
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_removed() {
    let (_b, lb) = one_backend().await;
    let (status, _, headers) = get(&client(), lb.listener_addr("web").unwrap(), "/hop").await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-public"], "yes");
    assert!(headers.get("x-private").is_none(), "{headers:?}");
    assert!(headers.get("keep-alive").is_none(), "{headers:?}");
}

#[tokio::test]
async fn http2_prior_knowledge_clients_are_served() {
    let (b, lb) = one_backend().await;
    let addr = lb.listener_addr("web").unwrap();
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    for i in 0..3 {
        let req = http::Request::get(format!("http://app.example/h2/{i}")).body(Full::new(Bytes::new())).unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "a");
    }
    let seen = b.last_seen();
    assert_eq!(seen.uri, "/h2/2");
    assert_eq!(seen.headers["host"], "app.example");
    assert_eq!(seen.headers["x-forwarded-host"], "app.example");
    // HTTP/2 clients send cookies as separate fields; an HTTP/1.1 backend gets one Cookie line
    // (RFC 9113 §8.2.3), with a body (hyper's upstream client) and without (lb's own).
    for body in [Bytes::new(), Bytes::from_static(b"payload")] {
        let req = http::Request::post("http://app.example/cookies")
            .header("cookie", "a=1")
            .header("cookie", "b=2; c=3")
            .body(Full::new(body.clone()))
            .unwrap();
        assert_eq!(send.send_request(req).await.unwrap().status(), 200);
        let seen = b.last_seen();
        let cookies: Vec<_> = seen.headers.get_all("cookie").iter().collect();
        assert_eq!(cookies, ["a=1; b=2; c=3"], "body {body:?}");
    }
}

#[tokio::test]
async fn the_request_target_names_the_host_and_a_request_has_one_host_header() {
    let (b, lb) = one_backend().await;
    let addr = lb.listener_addr("web").unwrap();
    let patience = Duration::from_secs(5);
    // Absolute form with a query and no path: origin form `/?q=1`, and the target's authority
    // (not the Host header, not the userinfo) is the host (RFC 9112 §3.2.2).
    let resp = raw(
        addr,
        b"GET http://user@shop.example?q=1 HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n",
        patience,
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let seen = b.last_seen();
    assert_eq!(seen.uri, "/?q=1");
    assert_eq!(seen.headers.get_all("host").iter().collect::<Vec<_>>(), ["shop.example"]);
    assert_eq!(seen.headers["x-forwarded-host"], "shop.example");
    // `Connection: host` does not take the Host header away.
    let resp = raw(addr, b"GET /c HTTP/1.1\r\nHost: kept.example\r\nConnection: host, close\r\n\r\n", patience).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(b.last_seen().headers["host"], "kept.example");
    // Two Host headers: refused by lb, nothing reaches the backend.
    let hits = b.hits();
    let resp = raw(addr, b"GET /d HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n", patience).await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(resp.contains("more than one Host"), "{resp}");
    assert_eq!(b.hits(), hits);
}

#[tokio::test]
async fn websocket_upgrade_is_tunnelled() {
    let (_b, lb) = one_backend().await;
    let addr = lb.listener_addr("web").unwrap();
    let (mut s, head) = open_websocket(addr).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    for msg in [&b"hello"[..], b"through the tunnel"] {
        s.write_all(msg).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await.unwrap().unwrap();
        assert_eq!(buf, msg);
    }
}

#[tokio::test]
async fn an_upgrade_request_answered_without_101_ends_its_connection() {
    let (b, lb) = one_backend().await;
    let addr = lb.listener_addr("web").unwrap();
    // The backend answers 200: no tunnel. What follows on the connection is not served.
    let resp = raw(
        addr,
        b"GET /plain HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\
          GET /second HTTP/1.1\r\nHost: h\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(resp.matches("HTTP/1.1 ").count(), 1, "{resp}");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.to_ascii_lowercase().contains("connection: close"), "{resp}");
    assert!(b.seen.lock().unwrap().iter().all(|s| s.uri != "/second"), "served after a refused upgrade");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_an_open_websocket_tunnel() {
    let (_b, lb) = one_backend().await;
    let addr = lb.listener_addr("web").unwrap();
    let (mut s, head) = open_websocket(addr).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    let mut echo = [0u8; 4];
    s.write_all(b"ping").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echo)).await.unwrap().unwrap();
    let shutdown = tokio::spawn(lb.shutdown(Duration::from_secs(30)));
    // Room for a shutdown that does not wait to be over (a bound for a broken build).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!shutdown.is_finished(), "shutdown ended with a tunnel open");
    s.write_all(b"pong").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echo)).await.unwrap().unwrap();
    assert_eq!(&echo, b"pong", "the tunnel still works while lb drains");
    drop(s);
    let drained =
        tokio::time::timeout(Duration::from_secs(10), shutdown).await.expect("shutdown ends when the tunnel does");
    assert!(drained.unwrap(), "drained, not cut at the deadline");
}

#[tokio::test]
async fn responses_stream_without_waiting_for_the_whole_body() {
    let (b, lb) = one_backend().await;
    let addr = lb.listener_addr("web").unwrap();
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/stream").header("host", "h").body(Full::new(Bytes::new())).unwrap();
    let mut body = send.send_request(req).await.unwrap().into_body();
    // The backend holds its second chunk until released: the first must arrive before that.
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("first chunk streamed")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "first;");
    b.release();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "second");
}

#[tokio::test]
async fn large_request_bodies_pass_intact() {
    let (b, lb) = one_backend().await;
    let addr = lb.listener_addr("web").unwrap();
    let payload: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::post("/echo").header("host", "h").body(Full::new(Bytes::from(payload.clone()))).unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let echoed = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(echoed.len(), payload.len());
    assert!(echoed == payload, "body changed on the way");
    assert_eq!(b.last_seen().body.len(), payload.len());
}

#[tokio::test]
async fn dead_backend_gives_a_plain_502_without_backend_headers() {
    // Bind and drop a socket to get a port nobody listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let lb = start_lb(&config(&format!("backends = [{{ addr = \"{dead}\" }}]"), "connect_timeout = \"500ms\"")).await;
    let (status, body, headers) = get(&client(), lb.listener_addr("web").unwrap(), "/").await;
    assert_eq!(status, 502);
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    assert!(body.contains("Bad Gateway"), "{body}");
    assert!(!body.contains("127.0.0.1"), "internals leaked: {body}");
    assert!(headers.get("x-served-by").is_none());
}

#[tokio::test]
async fn slow_backend_gives_504_after_request_timeout() {
    let b = TestBackend::start("a").await;
    let lb = start_lb(&config(&backends_toml(&[&b]), "request_timeout = \"300ms\"")).await;
    let started = std::time::Instant::now();
    let (status, body, _) = get(&client(), lb.listener_addr("web").unwrap(), "/slow/5000").await;
    assert_eq!(status, 504);
    assert!(body.contains("Gateway Timeout"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(4), "504 came only after {:?}", started.elapsed());
}

#[tokio::test]
async fn connect_failures_fail_over_even_with_a_body() {
    let live = TestBackend::start("live").await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let backends = format!(
        "backends = [{{ addr = \"{dead}\", name = \"dead\" }}, {{ addr = \"{}\", name = \"live\" }}]",
        live.addr
    );
    let lb = start_lb(&config(&backends, "retries = 1")).await;
    let addr = lb.listener_addr("web").unwrap();
    for i in 0..10 {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        let body = format!("payload {i}");
        let req = http::Request::post("/echo").header("host", "h").body(Full::new(Bytes::from(body.clone()))).unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200, "request {i}");
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), body);
    }
    assert_eq!(live.hits(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_admin_connections_are_closed_and_cannot_crowd_out_a_scrape() {
    let (_b, lb) = one_backend().await;
    let admin = lb.admin_addr().unwrap();
    // More silent connections than the admin serves at once.
    let mut silent = Vec::new();
    for _ in 0..lb::internals::ADMIN_MAX_CONNECTIONS + 8 {
        silent.push(tokio::net::TcpStream::connect(admin).await.unwrap());
    }
    // hyper's 10 s head timer closes them...
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(30), silent[0].read(&mut byte)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "a silent admin connection stayed open: {read:?}");
    // ...and a scrape waiting behind them is served.
    let scrape = tokio::time::timeout(Duration::from_secs(30), get(&client(), admin, "/healthz")).await;
    assert_eq!(scrape.expect("healthz answered").0, 200);
}

#[tokio::test]
async fn admin_healthz_answers() {
    let (_b, lb) = one_backend().await;
    let admin = lb.admin_addr().unwrap();
    let (status, body, _) = get(&client(), admin, "/healthz").await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "ok\n"));
    assert_eq!(get(&client(), admin, "/nope").await.0, 404);
}
