//! Hostile backends: answers that are not HTTP, framed twice or with bad bytes become 502 with
//! nothing passed on; an answer with both framings is passed on by its Transfer-Encoding; a
//! backend dying mid-response aborts the client connection rather than end it cleanly.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use super::config;
use crate::support::*;

/// A raw HTTP/1.1 backend: reads a request head and answers it with `script(path)` verbatim,
/// then closes. `/ok` gets a proper answer.
async fn scripted_backend(script: fn(&str) -> &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Some(got) = read_head(&mut s).await else { return };
                let head = String::from_utf8_lossy(&got).into_owned();
                let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                let answer: &[u8] = if path == "/ok" {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                } else {
                    script(&path)
                };
                let _ = s.write_all(answer).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

fn hostile_answers(path: &str) -> &'static [u8] {
    match path {
        "/garbage" => b"this is not HTTP at all\r\n\r\n",
        "/two-lengths" => b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 7\r\n\r\nhello12",
        "/bad-header" => b"HTTP/1.1 200 OK\r\nx-a: a\0b\r\ncontent-length: 2\r\n\r\nok",
        "/dies-sized" => b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten..",
        "/dies-chunked" => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
        "/both-framings" => {
            b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        }
        _ => b"",
    }
}

#[tokio::test]
async fn invalid_backend_answers_become_502_with_nothing_passed_on() {
    let backend = scripted_backend(hostile_answers).await;
    let lb = start_lb(&config(&format!("backends = [{{ addr = \"{backend}\" }}]"), "")).await;
    let addr = lb.listener_addr("web").unwrap();
    for path in ["/garbage", "/two-lengths", "/bad-header"] {
        let r = send(addr, format!("GET {path} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").as_bytes()).await;
        assert_eq!(r.status(), 502, "{path}: {}", r.text());
        assert!(r.closed);
        assert!(!r.text().contains("hello") && !r.text().contains("not HTTP"), "{path}: passed on: {}", r.text());
        let ok = send(addr, b"GET /ok HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").await;
        assert_eq!(ok.status(), 200, "after {path}: {}", ok.text());
    }
}

#[tokio::test]
async fn an_answer_with_both_framings_reaches_the_client_by_its_transfer_encoding() {
    let backend = scripted_backend(hostile_answers).await;
    let lb = start_lb(&config(&format!("backends = [{{ addr = \"{backend}\" }}]"), "")).await;
    let addr = lb.listener_addr("web").unwrap();
    // Without a body lb's own client reads the answer, with one hyper's client does.
    for request in [
        &b"GET /both-framings HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"[..],
        b"POST /both-framings HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    ] {
        let r = send(addr, request).await;
        let text = r.text();
        assert_eq!(r.status(), 200, "{text}");
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let head = head.to_ascii_lowercase();
        assert!(!head.contains("content-length: 100"), "the wrong length was passed on: {head}");
        assert!(head.contains("transfer-encoding: chunked"), "{head}");
        assert_eq!(body, "5\r\nhello\r\n0\r\n\r\n");
    }
}

#[tokio::test]
async fn a_backend_dying_mid_response_aborts_the_client_connection() {
    let backend = scripted_backend(hostile_answers).await;
    let lb = start_lb(&config(&format!("backends = [{{ addr = \"{backend}\" }}]"), "")).await;
    let addr = lb.listener_addr("web").unwrap();
    for path in ["/dies-sized", "/dies-chunked"] {
        // Over raw bytes: the client connection is closed without a complete message.
        let r = send(addr, format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes()).await;
        assert_eq!(r.status(), 200, "{path}: {}", r.text());
        assert!(r.closed, "{path}: left open after the backend died");
        let text = r.text();
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        if path == "/dies-sized" {
            assert!(r.head().contains("content-length: 100"), "{}", r.head());
            assert!(body.len() < 100, "{path}: {body:?}");
        } else {
            assert!(!body.contains("0\r\n\r\n"), "{path}: the truncated body was terminated: {body:?}");
        }
        // And an HTTP client sees an error, never a complete response.
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        let req = http::Request::get(path).header("host", "h").body(Empty::<Bytes>::new()).unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert!(resp.into_body().collect().await.is_err(), "{path}: a truncated body looked complete");
    }
    let ok = send(addr, b"GET /ok HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").await;
    assert_eq!(ok.status(), 200, "{}", ok.text());
}
