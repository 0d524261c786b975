//! Slow and idle clients: slowloris heads and stalled TLS handshakes cut by `header_timeout`,
//! idle keep-alive and HTTP/2 connections by `idle_timeout`, a client that stops reading dropped,
//! and long responses, which are activity, kept.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{lb_with, normal_request_is_served};
use crate::support::*;

#[tokio::test]
async fn slowloris_clients_are_closed_while_others_are_served() {
    let (b, _lb, addr) = lb_with("header_timeout = \"300ms\"").await;
    let mut slow = Vec::new();
    // Says nothing at all; starts an HTTP/2 preface and stalls; dribbles an HTTP/1 head.
    for opening in [&b""[..], b"PRI * HTTP/2.0\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(opening).await.unwrap();
        slow.push(tokio::spawn(async move { read_all(&mut s, PATIENCE).await.closed }));
    }
    let dribbler = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        for byte in b"GET / HTTP/1.1\r\nHost: h\r\nX-Slow: ".iter().chain(b"z".repeat(1000).iter()) {
            if s.write_all(&[*byte]).await.is_err() {
                return true; // closed on us
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    });
    // Meanwhile everyone else is served.
    for _ in 0..5 {
        normal_request_is_served(addr, &b).await;
    }
    for (i, t) in slow.into_iter().enumerate() {
        assert!(t.await.unwrap(), "slow client {i} was not closed");
    }
    let closed = tokio::time::timeout(PATIENCE * 4, dribbler).await.expect("dribbler hung").unwrap();
    assert!(closed, "a client dribbling its head was served for ever");
    assert_eq!(b.hits(), 5);
    normal_request_is_served(addr, &b).await;
}

/// `header_timeout` bounds how long a head may take to arrive, not how long a keep-alive
/// connection may wait between requests (that is `idle_timeout`): an idle connection outlives
/// several header timeouts and is served again, and a second head dribbled on it is cut.
#[tokio::test]
async fn header_timeout_cuts_slow_heads_but_not_idle_keep_alive_connections() {
    let (b, _lb, addr) = lb_with("header_timeout = \"300ms\"\nidle_timeout = \"60s\"").await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let request = b"GET /one HTTP/1.1\r\nHost: h\r\n\r\n";
    s.write_all(request).await.unwrap();
    assert!(read_raw_until(&mut s, "\r\n\r\na").await.starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    s.write_all(b"GET /two HTTP/1.1\r\nHost: h\r\n\r\n").await.unwrap();
    assert!(read_raw_until(&mut s, "\r\n\r\na").await.starts_with("HTTP/1.1 200"), "idle connection not served again");
    assert_eq!(b.last_seen().uri, "/two");
    // Now a third head, one byte every 50 ms: cut long before it could end.
    let dribble = [&b"GET /three HTTP/1.1\r\nHost: h\r\nX-Slow: "[..], &b"z".repeat(1000)].concat();
    let mut closed = false;
    for byte in dribble {
        if s.write_all(&[byte]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(closed, "a client dribbling its second head was kept for ever");
    assert_eq!(b.hits(), 2);
    normal_request_is_served(addr, &b).await;
}

/// A response that streams for longer than `idle_timeout` is activity, not idleness: the
/// connection stays open for the next request afterwards.
#[tokio::test]
async fn a_long_response_keeps_its_connection_alive() {
    let (b, _lb, addr) = lb_with("idle_timeout = \"300ms\"").await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /stream HTTP/1.1\r\nHost: h\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("first;") {
        let n = tokio::time::timeout(PATIENCE, s.read(&mut buf)).await.expect("no first chunk").unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    // The body is still on its way for more than three idle timeouts.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    b.release();
    while !got.ends_with(b"0\r\n\r\n") {
        let n = tokio::time::timeout(PATIENCE, s.read(&mut buf)).await.expect("no end").unwrap();
        assert!(n > 0, "closed before the end: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(!text.contains("connection: close"), "{text}");
    s.write_all(b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n").await.unwrap();
    assert!(read_raw_until(&mut s, "\r\n\r\na").await.starts_with("HTTP/1.1 200"), "keep-alive lost");
    assert_eq!(b.last_seen().uri, "/next");
}

/// A client that sends a request and then never reads the (large) answer would hold its
/// connection, and the backend's, for ever: it is dropped after `idle_timeout` without
/// progress, while everyone else is served.
#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_after_idle_timeout() {
    let (b, _lb, addr) = lb_with("idle_timeout = \"300ms\"").await;
    // 16 MiB echoed back to a client with a small, fixed receive buffer (no autotuning): far
    // more than the socket buffers on both sides can hold.
    let body = vec![b'x'; 16 << 20];
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    let head = format!("POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n", body.len());
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&body).await.unwrap();
    // Not reading; meanwhile others are served.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        normal_request_is_served(addr, &b).await;
    }
    let r = read_all(&mut s, PATIENCE).await;
    assert!(r.closed, "a client that stopped reading was kept");
    assert!(r.bytes.len() < body.len(), "the whole answer was delivered: {} bytes", r.bytes.len());
}

#[tokio::test]
async fn idle_http2_connections_are_closed_after_idle_timeout() {
    let (b, _lb, addr) = lb_with("idle_timeout = \"300ms\"").await;
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    let driver = tokio::spawn(conn);
    let req = http::Request::get("http://h/one").body(Empty::<Bytes>::new()).unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "a");
    // The client answers keep-alive pings, so only the idle deadline can end this.
    tokio::time::timeout(PATIENCE, driver).await.expect("idle HTTP/2 connection kept open").unwrap().unwrap();
    normal_request_is_served(addr, &b).await;
}

#[tokio::test]
async fn a_tls_client_that_never_says_hello_is_closed() {
    let dir = temp_dir("hostile-tls");
    write_pair(&dir, "c", &make_cert(&["localhost"]));
    let tls = format!(
        "header_timeout = \"300ms\"\ntls = [{{ cert = \"{d}/c.pem\", key = \"{d}/c.key\" }}]",
        d = dir.display()
    );
    let (_b, _lb, addr) = lb_with(&tls).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let r = read_all(&mut s, PATIENCE).await;
    assert!(r.closed, "a connection that never started the handshake was kept");
    assert!(r.bytes.is_empty());
    // Half a ClientHello (a TLS record header promising more) is no better.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await.unwrap();
    assert!(read_all(&mut s, PATIENCE).await.closed, "a stalled handshake was kept");
}
