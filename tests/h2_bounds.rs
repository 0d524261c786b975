//! HTTP/2 clients held to the listener's bounds (README, "Limits"): a stream whose client grants
//! no flow-control window is reset after `idle_timeout`, releasing its backend connection and
//! in-flight count; `max_headers` holds for HTTP/2 requests as for HTTP/1 heads.
//!
//! Real clients over h2c (prior knowledge) on 127.0.0.1: the h2 crate's client for the one that
//! advertises a zero window (it answers lb's PINGs by itself, as the misbehaving clients did),
//! hyper's for the others. Every wait has a generous hang guard ([`PATIENCE`]); no test asserts
//! how fast something happened.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Only there to turn a hang into a failure.
const PATIENCE: Duration = Duration::from_secs(15);

fn config(backends: &str, listener_extra: &str) -> String {
    format!(
        "[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n{listener_extra}\n\n\
         [pools.app]\nstrategy = \"round_robin\"\n{backends}\n"
    )
}

/// A raw HTTP/1.1 backend that answers every request with a chunked body's first chunk and
/// never ends it, then waits for lb to close the connection. Counts connections accepted and
/// connections lb closed (EOF or reset seen by the backend).
async fn endless_backend() -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (accepted, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (a, c) = (accepted.clone(), closed.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            let c = c.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\nfirst;\r\n";
                if s.write_all(head).await.is_err() {
                    return;
                }
                // Nothing more is sent; only lb closing the connection ends this.
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                c.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, accepted, closed)
}

#[tokio::test]
async fn a_stream_the_client_grants_no_window_is_reset_after_idle_timeout() {
    const STREAMS: usize = 4;
    let (backend, accepted, closed) = endless_backend().await;
    let lb = start_lb(&config(&format!("backends = [{{ addr = \"{backend}\" }}]"), "idle_timeout = \"1s\"")).await;
    let addr = lb.listener_addr("web").unwrap();
    let pool = lb.pool("app").unwrap();

    // A client that grants no stream window: response heads arrive (HEADERS are not flow
    // controlled), no DATA can. Its connection task answers lb's keep-alive PINGs.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut client, conn) =
        h2::client::Builder::new().initial_window_size(0).handshake::<_, Bytes>(tcp).await.unwrap();
    let driver = tokio::spawn(conn);
    let mut bodies = Vec::new();
    for i in 0..STREAMS {
        client = client.ready().await.unwrap();
        let req = http::Request::get(format!("http://h/stall/{i}")).body(()).unwrap();
        let (resp, _) = client.send_request(req, true).unwrap();
        let resp = tokio::time::timeout(PATIENCE, resp).await.expect("no response head").unwrap();
        assert_eq!(resp.status(), 200);
        bodies.push(resp.into_body());
    }
    // Every stream holds a backend connection and counts in flight while its body waits.
    assert_eq!(pool.load_full().backends[0].in_flight(), STREAMS);
    assert_eq!(accepted.load(Ordering::SeqCst), STREAMS);

    for mut body in bodies {
        let end = tokio::time::timeout(PATIENCE, body.data()).await.expect("stalled stream never reset");
        let err = match end {
            Some(Err(e)) => e,
            other => panic!("expected a reset stream, got {other:?}"),
        };
        assert!(err.is_reset() && err.is_remote(), "{err:?}");
        assert_eq!(err.reason(), Some(h2::Reason::CANCEL), "{err:?}");
    }
    // Released at lb: nothing in flight, and every backend connection closed (not kept for
    // reuse: its response never ended).
    let p = pool.load_full();
    assert!(eventually(PATIENCE, || p.backends[0].in_flight() == 0).await, "in flight: {}", p.backends[0].in_flight());
    assert!(
        eventually(PATIENCE, || closed.load(Ordering::SeqCst) == STREAMS).await,
        "backend connections closed: {} of {STREAMS}",
        closed.load(Ordering::SeqCst)
    );
    // Only the streams were reset: the connection itself was still up when they were.
    assert!(!driver.is_finished());
}

/// Sends `GET path` over h2c with `n` extra headers named by `name(i)`; returns the status and
/// body.
async fn h2_get_with_headers(addr: SocketAddr, path: &str, n: usize, name: fn(usize) -> String) -> (u16, String) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::get(format!("http://h{path}"));
    for i in 0..n {
        req = req.header(name(i), format!("v{i}"));
    }
    let resp = send.send_request(req.body(Empty::<Bytes>::new()).unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A raw HTTP/1.1 backend (no header limit of its own) that answers `ok` to every bodiless
/// request on a keep-alive connection and records each request head it received.
async fn recording_backend() -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 16 * 1024];
                loop {
                    while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head: Vec<u8> = got.drain(..end + 4).collect();
                        seen.lock().unwrap().push(String::from_utf8_lossy(&head).into_owned());
                        if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
            });
        }
    });
    (addr, heads)
}

#[tokio::test]
async fn max_headers_holds_for_http2_requests() {
    let (backend, heads) = recording_backend().await;
    let lb = start_lb(&config(&format!("backends = [{{ addr = \"{backend}\" }}]"), "max_headers = 100")).await;
    let addr = lb.listener_addr("web").unwrap();
    let numbered = |i: usize| format!("x-h-{i}");

    let (status, body) = h2_get_with_headers(addr, "/many", 150, numbered).await;
    assert_eq!((status, body.as_str()), (431, "431 Request Header Fields Too Large\n"));
    assert!(heads.lock().unwrap().is_empty(), "a refused request reached the backend");

    let (status, body) = h2_get_with_headers(addr, "/some", 50, numbered).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    {
        let heads = heads.lock().unwrap();
        assert_eq!(heads.len(), 1);
        assert!(heads[0].starts_with("GET /some HTTP/1.1\r\n") && heads[0].contains("x-h-49: v49\r\n"), "{}", heads[0]);
    }

    // HTTP/2 clients send one `cookie` field per cookie, where HTTP/1 has one line: 150 cookies
    // count as one header, as they would over HTTP/1.
    let (status, _) = h2_get_with_headers(addr, "/cookies", 150, |_| "cookie".to_owned()).await;
    assert_eq!(status, 200);
    assert_eq!(heads.lock().unwrap().len(), 2);
}
