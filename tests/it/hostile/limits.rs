//! The size limits (`max_uri_bytes`, 64 KiB heads, `max_headers`, `max_body_bytes`): at the
//! limit served, over it refused with 414/431/413 and a close, nothing (or, for a streamed body,
//! a visibly unfinished body) forwarded; and how the limit keys are validated.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{config, lb_with, normal_request_is_served};
use crate::support::*;

/// A head trickled in one line per segment gets 431 as soon as it has more lines than
/// `max_headers`, without waiting for it to end (nor rescanning it on every segment).
#[tokio::test]
async fn a_trickled_head_with_too_many_lines_gets_431_before_it_ends() {
    let (b, _lb, addr) = lb_with("header_timeout = \"5s\"").await;
    let s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let (mut rd, mut wr) = s.into_split();
    let answered = Arc::new(AtomicBool::new(false));
    let a = answered.clone();
    let reader = tokio::spawn(async move {
        let mut bytes = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout(PATIENCE, rd.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {
                    bytes.extend_from_slice(&buf[..n]);
                    a.store(true, Ordering::SeqCst);
                }
                Ok(_) => return (bytes, true),
                Err(_) => return (bytes, false),
            }
        }
    });
    wr.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n").await.unwrap();
    // Far fewer than the head would need to reach 64 KiB; the default max_headers is 100.
    for _ in 0..3000 {
        if answered.load(Ordering::SeqCst) || wr.write_all(b"a\n").await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (bytes, closed) = reader.await.unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.starts_with("HTTP/1.1 431 "), "{text}");
    assert!(text.ends_with("\r\n\r\n431 Request Header Fields Too Large\n"), "{text}");
    assert!(closed, "connection left open");
    assert_eq!(b.hits(), 0);
    normal_request_is_served(addr, &b).await;
}

#[tokio::test]
async fn long_uris_get_414() {
    let (b, _lb, addr) = lb_with("").await;
    // Default max_uri_bytes: 8 KiB of path and query.
    let at_limit = format!("GET /{} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", "a".repeat(8 * 1024 - 1));
    assert_eq!(send(addr, at_limit.as_bytes()).await.status(), 200);
    assert_eq!(b.hits(), 1);
    let over = format!("GET /?q={} HTTP/1.1\r\nHost: h\r\n\r\n", "a".repeat(8 * 1024));
    let r = send(addr, over.as_bytes()).await;
    assert_eq!(r.status(), 414, "{}", r.text());
    assert!(r.closed);
    assert!(r.head().contains("connection: close"), "{}", r.head());
    assert_eq!(b.hits(), 1, "the long request reached the backend");
    normal_request_is_served(addr, &b).await;

    // Configured lower.
    let (b, _lb, addr) = lb_with("max_uri_bytes = 100").await;
    let ok = format!("GET /{} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", "a".repeat(99));
    assert_eq!(send(addr, ok.as_bytes()).await.status(), 200);
    let over = format!("GET /{} HTTP/1.1\r\nHost: h\r\n\r\n", "a".repeat(100));
    let r = send(addr, over.as_bytes()).await;
    assert_eq!((r.status(), r.closed), (414, true), "{}", r.text());
    assert_eq!(b.hits(), 1);
    normal_request_is_served(addr, &b).await;
}

#[tokio::test]
async fn heads_over_64_kib_or_too_many_headers_get_431() {
    let (b, _lb, addr) = lb_with("max_headers = 20").await;
    let head = |filler: usize, headers: usize| {
        let extra: String = (0..headers).map(|i| format!("X-H{i}: v\r\n")).collect();
        format!("GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\nX-Big: {}\r\n{extra}\r\n", "a".repeat(filler))
    };
    // Under 64 KiB, under the header count: served.
    assert_eq!(send(addr, head(60 * 1024, 10).as_bytes()).await.status(), 200);
    assert_eq!(b.hits(), 1);
    for (what, bytes) in [("a 65 KiB head", head(65 * 1024, 0)), ("25 headers", head(10, 25))] {
        let r = send(addr, bytes.as_bytes()).await;
        assert_eq!(r.status(), 431, "{what}: {}", r.text());
        assert!(r.closed, "{what}");
        assert!(r.head().contains("content-type: text/plain"), "{what}: {}", r.head());
        assert!(r.text().ends_with("\r\n\r\n431 Request Header Fields Too Large\n"), "{what}: {}", r.text());
        assert_eq!(b.hits(), 1, "{what} reached the backend");
        normal_request_is_served(addr, &b).await;
        b.hits.store(1, Ordering::SeqCst);
    }
}

/// A backend that records every byte it receives and never answers; `closed` turns true when
/// the proxy closes the connection to it.
async fn recording_backend() -> (SocketAddr, Arc<Mutex<Vec<u8>>>, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (got, closed) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicBool::new(false)));
    let (g, c) = (got.clone(), closed.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (g, c) = (g.clone(), c.clone());
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => g.lock().unwrap().extend_from_slice(&buf[..n]),
                    }
                }
                c.store(true, Ordering::SeqCst);
            });
        }
    });
    (addr, got, closed)
}

#[tokio::test]
async fn bodies_over_max_body_bytes_get_413() {
    let (b, _lb, addr) = lb_with("max_body_bytes = 1000").await;
    let post = |len: usize| {
        let mut r = format!("POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
            .into_bytes();
        r.resize(r.len() + len, b'x');
        r
    };
    let r = send(addr, &post(1000)).await;
    assert_eq!(r.status(), 200, "{}", r.text());
    assert_eq!(b.hits(), 1);
    // Declared too large: refused before anything is forwarded.
    let r = send(addr, &post(1001)).await;
    assert_eq!(r.status(), 413, "{}", r.text());
    assert!(r.closed);
    assert!(r.head().contains("connection: close"), "{}", r.head());
    assert_eq!(b.hits(), 1, "the oversized request reached the backend");
    normal_request_is_served(addr, &b).await;

    // Chunked, no declared length: streamed until the limit is crossed, then cut off. The
    // backend gets a body that visibly never ended (no last chunk) and a closed connection.
    let (rec, got, rec_closed) = recording_backend().await;
    let lb = start_lb(&config(&format!("backends = [{{ addr = \"{rec}\" }}]"), "max_body_bytes = 1000")).await;
    let addr = lb.listener_addr("web").unwrap();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n").await.unwrap();
    for _ in 0..3 {
        s.write_all(format!("258\r\n{}\r\n", "y".repeat(600)).as_bytes()).await.unwrap();
    }
    let _ = s.write_all(b"0\r\n\r\n").await;
    let r = read_all(&mut s, PATIENCE).await;
    assert_eq!(r.status(), 413, "{}", r.text());
    assert!(r.closed);
    assert!(eventually(PATIENCE, || rec_closed.load(Ordering::SeqCst)).await, "backend connection left open");
    let upstream = String::from_utf8_lossy(&got.lock().unwrap()).into_owned();
    assert!(upstream.starts_with("POST /upload HTTP/1.1\r\n"), "{upstream}");
    assert!(!upstream.contains("\r\n0\r\n\r\n"), "the cut-off body looked complete to the backend");
    assert!(upstream.matches('y').count() <= 1000, "more than max_body_bytes went upstream");
}

#[tokio::test]
async fn an_aborted_upload_is_not_blamed_on_the_backend() {
    let (b, lb, addr) = lb_with("").await;
    // More than `fall` (3) in a row: were they counted as backend failures, it would be down.
    for _ in 0..5 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\n\r\nonly a little").await.unwrap();
        s.shutdown().await.unwrap();
        let _ = read_all(&mut s, PATIENCE).await;
    }
    assert_eq!(up_names(&lb, "app"), ["a"]);
    normal_request_is_served(addr, &b).await;
}

#[test]
fn limit_keys_are_validated_with_their_location() {
    let base = "[pools.app]\nstrategy = \"round_robin\"\nbackends = [{ addr = \"127.0.0.1:9\" }]\n\n\
                [[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n";
    let cases = [
        ("max_headers = 0", "lb.toml:9:15: max_headers must be between 1 and 10000 (got 0)"),
        ("max_headers = 10001", "lb.toml:9:15: max_headers must be between 1 and 10000 (got 10001)"),
        ("max_uri_bytes = 70000", "lb.toml:9:17: max_uri_bytes must be between 1 and 65534 (got 70000)"),
        ("max_body_bytes = 0", "lb.toml:9:18: max_body_bytes must be at least 1 (leave it out for no limit)"),
        ("max_body_bytes = \"1MB\"", "lb.toml:9:18: invalid type"),
    ];
    for (line, want) in cases {
        let err = lb::config::parse(std::path::Path::new("lb.toml"), &format!("{base}{line}\n")).unwrap_err();
        assert!(err.to_string().starts_with(want), "{line}: got {err}");
    }
    let ok = format!("{base}max_headers = 50\nmax_uri_bytes = 2048\nmax_body_bytes = 1048576\n");
    let l = &lb::config::parse(std::path::Path::new("lb.toml"), &ok).unwrap().config.listeners[0];
    assert_eq!((l.max_headers, l.max_uri_bytes, l.max_body_bytes), (50, 2048, Some(1_048_576)));
    let d = &lb::config::parse(std::path::Path::new("lb.toml"), base).unwrap().config.listeners[0];
    assert_eq!((d.max_headers, d.max_uri_bytes, d.max_body_bytes), (100, 8192, None));
}
