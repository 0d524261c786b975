//! lb's own HTTP/1.1 upstream client (`proxy/h1_client.rs`), which carries every bodiless,
//! non-upgrade request: keep-alive reuse, framing of every kind of answer (Content-Length,
//! chunked, until close, HEAD, 204/304, 1xx), a pooled connection the backend closed, headers
//! both ways, and the 64 KiB limit on answer heads.
//!
//! The backends are raw TCP scripts that count the connections they accept and record each
//! request head with the connection it came on, so every test says exactly which upstream
//! connection carried which request. lb runs with one worker: idle upstream connections are
//! kept per worker, so only then do separate client connections share them by design.
//! Every wait has a generous hang guard ([`PATIENCE`]); no test asserts how fast anything was.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{self, eventually, read_raw_until, PATIENCE};

/// A plain keep-alive answer.
const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

/// What the scripted backend does after writing an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    /// Waits for the next request on the same connection (whatever the answer said).
    KeepOpen,
    /// Closes the connection.
    Close,
}

/// A raw HTTP/1.1 backend answering each request head with `script(target)`, byte for byte.
struct Backend {
    addr: SocketAddr,
    /// Connections accepted.
    accepts: Arc<AtomicUsize>,
    /// Connections the backend closed itself (`Then::Close`).
    closed: Arc<AtomicUsize>,
    /// Every request head, raw, with the index (in order of accept) of its connection.
    heads: Arc<Mutex<Vec<(usize, String)>>>,
}

impl Backend {
    async fn start(script: fn(&str) -> (Vec<u8>, Then)) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let b = Backend {
            addr: listener.local_addr().unwrap(),
            accepts: Arc::default(),
            closed: Arc::default(),
            heads: Arc::default(),
        };
        let (accepts, closed, heads) = (b.accepts.clone(), b.closed.clone(), b.heads.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let conn = accepts.fetch_add(1, Ordering::SeqCst);
                let (closed, heads) = (closed.clone(), heads.clone());
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    let mut buf = [0u8; 8192];
                    loop {
                        // Requests from lb's own client have no body: a head is the whole request.
                        let end = loop {
                            if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => got.extend_from_slice(&buf[..n]),
                            }
                        };
                        let head = String::from_utf8_lossy(&got.drain(..end).collect::<Vec<u8>>()).into_owned();
                        let target = head.split(' ').nth(1).unwrap_or("/").to_owned();
                        heads.lock().unwrap().push((conn, head));
                        let (answer, then) = script(&target);
                        if s.write_all(&answer).await.is_err() {
                            return;
                        }
                        if then == Then::Close {
                            let _ = s.shutdown().await;
                            drop(s);
                            closed.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    }
                });
            }
        });
        b
    }

    fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }

    /// (connection, request target) of every request so far, in order.
    fn log(&self) -> Vec<(usize, String)> {
        let heads = self.heads.lock().unwrap();
        heads.iter().map(|(c, h)| (*c, h.split(' ').nth(1).unwrap_or_default().to_owned())).collect()
    }
}

/// Connection index and target pairs, for comparing with [`Backend::log`].
fn expect(pairs: &[(usize, &str)]) -> Vec<(usize, String)> {
    pairs.iter().map(|&(c, t)| (c, t.to_owned())).collect()
}

/// lb with one http listener and one worker, balancing over `backend` alone.
async fn start_lb_one_worker(backend: SocketAddr) -> (lb::app::Running, SocketAddr) {
    let toml = format!(
        "[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nmode = \"http\"\npool = \"app\"\n\n\
         [pools.app]\nstrategy = \"round_robin\"\nbackends = [{{ addr = \"{backend}\" }}]\n"
    );
    let loaded = lb::config::parse(std::path::Path::new("lb.toml"), &toml).expect("test config is valid");
    let lb = lb::app::Running::start_with_workers(loaded.config, 1).await.expect("lb starts");
    let addr = lb.listener_addr("web").unwrap();
    (lb, addr)
}

/// One keep-alive client connection to lb.
type Client = SendRequest<Empty<Bytes>>;

async fn connect(addr: SocketAddr) -> Client {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    sender
}

/// What a client got: status, headers, the whole (decoded) body.
struct Got {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

/// Sends one request on `client` and reads the whole answer.
async fn fetch(client: &mut Client, method: Method, target: &str, headers: &[(&str, &str)]) -> Got {
    let mut req = Request::builder().method(method).uri(target).header("host", "h");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(Empty::new()).unwrap();
    let exchange = async {
        client.ready().await?;
        let resp = client.send_request(req).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok::<_, hyper::Error>(Got { status: parts.status.as_u16(), headers: parts.headers, body })
    };
    match tokio::time::timeout(PATIENCE, exchange).await {
        Err(_) => panic!("{target}: no whole answer within {PATIENCE:?}"),
        Ok(Err(e)) => panic!("{target}: {e}"),
        Ok(Ok(got)) => got,
    }
}

/// A GET on `client`, checked to be `200 ok`.
async fn get_ok(client: &mut Client, target: &str) {
    let got = fetch(client, Method::GET, target, &[]).await;
    assert_eq!((got.status, &got.body[..]), (200, &b"ok"[..]), "{target}");
}

/// A GET on a connection of its own.
async fn get_once(addr: SocketAddr, target: &str) -> Got {
    fetch(&mut connect(addr).await, Method::GET, target, &[]).await
}

// ---- 1. keep-alive reuse ----

#[tokio::test]
async fn keep_alive_answers_reuse_one_upstream_connection() {
    let b = Backend::start(|_| (OK.to_vec(), Then::KeepOpen)).await;
    let (_lb, addr) = start_lb_one_worker(b.addr).await;
    let mut want = Vec::new();
    let mut client = connect(addr).await;
    for i in 0..20 {
        let target = format!("/one/{i}");
        get_ok(&mut client, &target).await;
        want.push((0, target));
    }
    drop(client);
    // Several clients one after another, each on a connection of its own.
    for c in 0..5 {
        let mut client = connect(addr).await;
        for i in 0..3 {
            let target = format!("/client{c}/{i}");
            get_ok(&mut client, &target).await;
            want.push((0, target));
        }
    }
    assert_eq!(b.accepts(), 1, "requests: {:?}", b.log());
    assert_eq!(b.log(), want);
}

// ---- 2. answers that end their connection ----

fn ending_answers(target: &str) -> (Vec<u8>, Then) {
    match target {
        // The backend says close but leaves the socket open: only the header can stop reuse.
        "/close-header" => {
            (b"HTTP/1.1 200 OK\r\nConnection: close\r\ncontent-length: 5\r\n\r\nclose".to_vec(), Then::KeepOpen)
        }
        "/http10" => (b"HTTP/1.0 200 OK\r\ncontent-length: 6\r\n\r\nhttp10".to_vec(), Then::KeepOpen),
        "/http10-keep-alive" => {
            (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\ncontent-length: 4\r\n\r\nkept".to_vec(), Then::KeepOpen)
        }
        // No length at all: the body is everything until the backend closes.
        "/until-close" => {
            let mut answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n\r\n".to_vec();
            answer.extend(close_delimited_body());
            (answer, Then::Close)
        }
        _ => (OK.to_vec(), Then::KeepOpen),
    }
}

/// 300 KB, larger than any one read, and not the same byte twice in a row.
fn close_delimited_body() -> Vec<u8> {
    (0..300_000u32).map(|i| (i % 251) as u8).collect()
}

#[tokio::test]
async fn answers_that_end_their_connection_are_passed_on_whole_and_not_reused() {
    let b = Backend::start(ending_answers).await;
    let (_lb, addr) = start_lb_one_worker(b.addr).await;
    let body = |target| async move {
        let got = get_once(addr, target).await;
        assert_eq!(got.status, 200, "{target}");
        got.body
    };
    assert_eq!(body("/ok").await, "ok");
    assert_eq!(body("/close-header").await, "close");
    assert_eq!(body("/ok").await, "ok");
    assert_eq!(body("/http10").await, "http10");
    assert_eq!(body("/ok").await, "ok");
    // HTTP/1.0 that asks for keep-alive is kept, like HTTP/1.1.
    assert_eq!(body("/http10-keep-alive").await, "kept");
    assert_eq!(body("/ok").await, "ok");
    assert_eq!(body("/until-close").await, close_delimited_body());
    assert_eq!(body("/ok").await, "ok");
    assert_eq!(
        b.log(),
        expect(&[
            (0, "/ok"),
            (0, "/close-header"),
            (1, "/ok"),
            (1, "/http10"),
            (2, "/ok"),
            (2, "/http10-keep-alive"),
            (2, "/ok"),
            (2, "/until-close"),
            (3, "/ok"),
        ])
    );
    assert_eq!(b.accepts(), 4);
}

// ---- 3. chunked answers ----

fn chunked_answers(target: &str) -> (Vec<u8>, Then) {
    match target {
        "/chunked" => (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nhello\r\n\
              1;ext=1\r\n \r\n\
              6;a=b;c=\"d e\"\r\nworld!\r\n\
              A\r\n0123456789\r\n\
              0\r\nx-trailer: t\r\nx-other: u\r\n\r\n"
                .to_vec(),
            Then::KeepOpen,
        ),
        "/chunked-big" => {
            let mut answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n".to_vec();
            for piece in big_chunks() {
                answer.extend(format!("{:X}\r\n", piece.len()).as_bytes());
                answer.extend(&piece);
                answer.extend(b"\r\n");
            }
            answer.extend(b"0\r\n\r\n");
            (answer, Then::KeepOpen)
        }
        _ => (OK.to_vec(), Then::KeepOpen),
    }
}

/// Chunks of 1 byte to 100 KB, each a different byte pattern.
fn big_chunks() -> Vec<Vec<u8>> {
    [1usize, 0x8000, 0x10001, 7, 100_000]
        .iter()
        .enumerate()
        .map(|(k, &n)| (0..n).map(|i| ((i * 7 + k * 13) % 256) as u8).collect())
        .collect()
}

#[tokio::test]
async fn chunked_answers_reach_the_client_decoded_and_the_connection_is_reused() {
    let b = Backend::start(chunked_answers).await;
    let (_lb, addr) = start_lb_one_worker(b.addr).await;
    let mut client = connect(addr).await;
    let got = fetch(&mut client, Method::GET, "/chunked", &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, "hello world!0123456789");
    get_ok(&mut client, "/ok").await;
    let got = fetch(&mut client, Method::GET, "/chunked-big", &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, big_chunks().concat());
    get_ok(&mut client, "/ok").await;
    assert_eq!(b.log(), expect(&[(0, "/chunked"), (0, "/ok"), (0, "/chunked-big"), (0, "/ok")]));
    assert_eq!(b.accepts(), 1);
}

// ---- 4. HEAD ----

#[tokio::test]
async fn head_answers_with_a_content_length_carry_no_body_and_keep_the_connection() {
    let b = Backend::start(|target| match target {
        "/doc" => (b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\nx-head: yes\r\n\r\n".to_vec(), Then::KeepOpen),
        _ => (OK.to_vec(), Then::KeepOpen),
    })
    .await;
    let (_lb, addr) = start_lb_one_worker(b.addr).await;
    // Over raw bytes: the head, then nothing until the next request's answer.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"HEAD /doc HTTP/1.1\r\nHost: h\r\n\r\n").await.unwrap();
    let head = read_raw_until(&mut s, "\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("\r\ncontent-length: 12\r\n"), "{head}");
    assert!(head.to_ascii_lowercase().contains("\r\nx-head: yes\r\n"), "{head}");
    s.write_all(b"GET /after-head HTTP/1.1\r\nHost: h\r\n\r\n").await.unwrap();
    let next = read_raw_until(&mut s, "\r\n\r\n").await;
    assert!(next.starts_with("HTTP/1.1 200"), "bytes after the HEAD answer: {next:?}");
    // And twice more through an HTTP client, on the same upstream connection.
    let mut client = connect(addr).await;
    for _ in 0..2 {
        let got = fetch(&mut client, Method::HEAD, "/doc", &[]).await;
        assert_eq!((got.status, &got.headers["content-length"], got.body.len()), (200, &"12".parse().unwrap(), 0));
        get_ok(&mut client, "/ok").await;
    }
    assert_eq!(b.log(), expect(&[(0, "/doc"), (0, "/after-head"), (0, "/doc"), (0, "/ok"), (0, "/doc"), (0, "/ok")]));
    assert_eq!(b.accepts(), 1);
}

// ---- 5. 204 and 304 ----

#[tokio::test]
async fn no_content_and_not_modified_answers_keep_the_connection() {
    let b = Backend::start(|target| match target {
        "/204" => (b"HTTP/1.1 204 No Content\r\nx-a: 1\r\n\r\n".to_vec(), Then::KeepOpen),
        // A 304 may state the length of what it stands for; it still has no body.
        "/304" => {
            (b"HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\ncontent-length: 100\r\n\r\n".to_vec(), Then::KeepOpen)
        }
        _ => (OK.to_vec(), Then::KeepOpen),
    })
    .await;
    let (_lb, addr) = start_lb_one_worker(b.addr).await;
    let mut client = connect(addr).await;
    for _ in 0..2 {
        let got = fetch(&mut client, Method::GET, "/204", &[]).await;
        assert_eq!((got.status, &got.headers["x-a"], got.body.len()), (204, &"1".parse().unwrap(), 0));
        get_ok(&mut client, "/ok").await;
        let got = fetch(&mut client, Method::GET, "/304", &[("if-none-match", "\"v1\"")]).await;
        assert_eq!((got.status, &got.headers["etag"], got.body.len()), (304, &"\"v1\"".parse().unwrap(), 0));
        get_ok(&mut client, "/ok").await;
    }
    let round = [(0, "/204"), (0, "/ok"), (0, "/304"), (0, "/ok")];
    assert_eq!(b.log(), expect(&[round, round].concat()));
    assert_eq!(b.accepts(), 1);
}

// ---- 6. 1xx ----

#[tokio::test]
async fn informational_answers_before_the_final_one_are_skipped() {
    let b = Backend::start(|target| match target {
        "/hints" => (
            b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n\
              HTTP/1.1 100 Continue\r\n\r\n\
              HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-final: yes\r\n\r\nhello"
                .to_vec(),
            Then::KeepOpen,
        ),
        _ => (OK.to_vec(), Then::KeepOpen),
    })
    .await;
    let (_lb, addr) = start_lb_one_worker(b.addr).await;
    let mut client = connect(addr).await;
    let got = fetch(&mut client, Method::GET, "/hints", &[]).await;
    assert_eq!((got.status, &got.body[..]), (200, &b"hello"[..]));
    assert_eq!(got.headers["x-final"], "yes");
    assert!(!got.headers.contains_key("link"), "a 1xx header leaked into the final answer: {:?}", got.headers);
    get_ok(&mut client, "/ok").await;
    assert_eq!(b.log(), expect(&[(0, "/hints"), (0, "/ok")]));
    assert_eq!(b.accepts(), 1);
}

// ---- 7. a pooled connection closed by the backend ----

#[tokio::test]
async fn a_pooled_connection_the_backend_closed_is_replaced_without_an_error() {
    // `/bye` is a keep-alive answer after which the backend closes the idle connection, the
    // way a backend's keep-alive timeout does.
    let b = Backend::start(|target| match target {
        "/bye" => (OK.to_vec(), Then::Close),
        _ => (OK.to_vec(), Then::KeepOpen),
    })
    .await;
    let (lb, addr) = start_lb_one_worker(b.addr).await;
    let mut client = connect(addr).await;
    get_ok(&mut client, "/first").await;
    let mut want = vec![(0, "/first".to_owned())];
    for round in 0..5 {
        get_ok(&mut client, "/bye").await;
        assert!(
            eventually(PATIENCE, || b.closed.load(Ordering::SeqCst) == round + 1).await,
            "the backend did not close"
        );
        let target = format!("/after/{round}");
        let got = fetch(&mut client, Method::GET, &target, &[]).await;
        assert_eq!((got.status, &got.body[..]), (200, &b"ok"[..]), "{target}");
        want.push((round, "/bye".to_owned()));
        want.push((round + 1, target));
    }
    assert_eq!(b.log(), want);
    assert_eq!(b.accepts(), 6);
    // Not the backend's fault: it stays in rotation.
    assert_eq!(support::up_names(&lb, "app").len(), 1);
}

// ---- 8. headers both ways ----

#[tokio::test]
async fn headers_pass_unchanged_both_ways() {
    let b = Backend::start(|target| match target {
        "/path?q=1" => (
            b"HTTP/1.1 200 OK\r\n\
              Set-Cookie: a=1; Path=/; HttpOnly\r\n\
              content-type: text/plain; charset=utf-8\r\n\
              X-Odd-Value: a,  b ;q=\"1, 2\"\t x\r\n\
              X-Empty:\r\n\
              set-cookie: b=2; Max-Age=60\r\n\
              x-utf8: caf\xc3\xa9\r\n\
              content-length: 4\r\n\r\nbody"
                .to_vec(),
            Then::KeepOpen,
        ),
        _ => (OK.to_vec(), Then::KeepOpen),
    })
    .await;
    let (_lb, addr) = start_lb_one_worker(b.addr).await;
    let mut client = connect(addr).await;
    let sent = [("x-custom", "hello  world; \"q\""), ("x-multi", "1"), ("x-multi", "2")];
    let got = fetch(&mut client, Method::GET, "/path?q=1", &sent).await;
    assert_eq!((got.status, &got.body[..]), (200, &b"body"[..]));
    let all = |name| got.headers.get_all(name).iter().map(|v| v.as_bytes().to_vec()).collect::<Vec<_>>();
    assert_eq!(all("set-cookie"), [&b"a=1; Path=/; HttpOnly"[..], b"b=2; Max-Age=60"]);
    assert_eq!(all("content-type"), [b"text/plain; charset=utf-8"]);
    assert_eq!(all("x-odd-value"), [&b"a,  b ;q=\"1, 2\"\t x"[..]]);
    assert_eq!(all("x-empty"), [b""]);
    assert_eq!(all("x-utf8"), [&b"caf\xc3\xa9"[..]]);
    assert_eq!(all("content-length"), [b"4"]);

    let heads = b.heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 1, "{heads:?}");
    let head = &heads[0].1;
    let lines: Vec<&str> = head.trim_end().split("\r\n").collect();
    assert_eq!(lines[0], "GET /path?q=1 HTTP/1.1", "{head}");
    let named = |name: &str| {
        let prefix = format!("{name}:");
        lines.iter().filter(|l| l.to_ascii_lowercase().starts_with(&prefix)).copied().collect::<Vec<_>>()
    };
    assert_eq!(named("x-custom"), ["x-custom: hello  world; \"q\""], "{head}");
    assert_eq!(named("x-multi"), ["x-multi: 1", "x-multi: 2"], "{head}");
    assert_eq!(named("host"), ["host: h"], "{head}");
}

// ---- 9. answer heads over 64 KiB ----

/// `/big/N` answers with a head of exactly N bytes (a long `x-big` header pads it).
fn big_heads(target: &str) -> (Vec<u8>, Then) {
    let Some(size) = target.strip_prefix("/big/").and_then(|n| n.parse::<usize>().ok()) else {
        return (OK.to_vec(), Then::KeepOpen);
    };
    (big_head(size), Then::KeepOpen)
}

fn big_head(size: usize) -> Vec<u8> {
    let mut answer = BIG_START.to_vec();
    answer.resize(size - 4, b'a');
    answer.extend(b"\r\n\r\nok");
    answer
}

const BIG_START: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-big: ";

#[tokio::test]
async fn answer_heads_over_64_kib_get_502() {
    let b = Backend::start(big_heads).await;
    let (_lb, addr) = start_lb_one_worker(b.addr).await;
    // Under the limit: passed on whole.
    let got = get_once(addr, &format!("/big/{}", 60 * 1024)).await;
    assert_eq!((got.status, &got.body[..]), (200, &b"ok"[..]));
    assert_eq!(got.headers["x-big"].len(), 60 * 1024 - BIG_START.len() - 4);
    let sizes = [64 * 1024 + 1, 70_000, 80 * 1024, 100 * 1024, 200 * 1024, 1 << 20];
    let mut statuses = Vec::new();
    for size in sizes {
        let got = get_once(addr, &format!("/big/{size}")).await;
        statuses.push((size, got.status, got.headers.get("x-big").map_or(0, |v| v.len())));
        // The backend is still served (and stays in rotation).
        assert_eq!(&get_once(addr, "/ok").await.body[..], b"ok", "after a {size}-byte head");
    }
    // (head size, status, length of the x-big value passed on): 502, and nothing passed on.
    assert_eq!(statuses, sizes.map(|size| (size, 502, 0)));
}
