//! HTTP/2 clients held to the listener's bounds (README, "Limits"): `max_headers` holds for
//! HTTP/2 requests as for HTTP/1 heads.
//!
//! Real clients over h2c (prior knowledge) on 127.0.0.1, real backends on raw sockets.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn config(backends: &str, listener_extra: &str) -> String {
    format!(
        "[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n{listener_extra}\n\n\
         [pools.app]\nstrategy = \"round_robin\"\n{backends}\n"
    )
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
