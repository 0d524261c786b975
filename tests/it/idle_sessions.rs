//! Byte-stream sessions (tcp mode, and upgraded HTTP connections such as WebSocket) end after
//! the listener's `idle_timeout` without a byte delivered either way: a silent session, and one
//! whose client stopped reading, are closed on both sides; one that keeps moving is not. An
//! HTTP connection whose request body keeps trickling after its answer is complete is closed
//! too.
//!
//! `idle_timeout` is 1 s here (3 s where traffic must outlive it); every wait below is bounded only to keep a broken build from
//! hanging, never to measure how fast lb was.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::support::*;

async fn tcp_lb(backend: SocketAddr) -> (lb::app::Running, SocketAddr) {
    tcp_lb_idle(backend, "1s").await
}

async fn tcp_lb_idle(backend: SocketAddr, idle: &str) -> (lb::app::Running, SocketAddr) {
    let toml = format!(
        "[[listeners]]\nname = \"raw\"\nbind = \"127.0.0.1:0\"\nmode = \"tcp\"\npool = \"p\"\nidle_timeout = \"{idle}\"\n\n\
         [pools.p]\nstrategy = \"round_robin\"\nbackends = [{{ addr = \"{backend}\" }}]\n"
    );
    let lb = start_lb(&toml).await;
    let addr = lb.listener_addr("raw").unwrap();
    (lb, addr)
}

#[tokio::test]
async fn a_silent_tcp_session_is_closed_on_both_sides_after_idle_timeout() {
    let (backend, mut ended) = draining_backend(b"").await;
    let (_lb, addr) = tcp_lb(backend).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(b"hello").await.unwrap();
    // Then nothing, either way.
    let got = tokio::time::timeout(PATIENCE, ended.recv()).await.expect("the backend connection was closed");
    assert_eq!(got.as_deref(), Some(&b"hello"[..]));
    let mut rest = Vec::new();
    let n = tokio::time::timeout(PATIENCE, client.read_to_end(&mut rest))
        .await
        .expect("the client connection was closed")
        .expect("closed cleanly");
    assert_eq!(n, 0, "nothing was sent to the client: {rest:?}");
}

#[tokio::test]
async fn a_tcp_session_that_keeps_moving_outlives_idle_timeout() {
    let (backend, mut ended) = draining_backend(b"").await;
    // 3 s here, so that a stall of the test machine cannot pass for idleness.
    let (_lb, addr) = tcp_lb_idle(backend, "3s").await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    // A byte every 200 ms for 4 s: longer than idle_timeout, never long without traffic.
    let mut sent = Vec::new();
    for i in 0..20u8 {
        client.write_all(&[b'a' + i]).await.unwrap();
        sent.push(b'a' + i);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    client.shutdown().await.unwrap();
    let got = tokio::time::timeout(PATIENCE, ended.recv()).await.unwrap();
    assert_eq!(got, Some(sent), "every byte arrived, in one session");
}

#[tokio::test]
async fn a_tcp_client_that_stops_reading_is_cut_off_after_idle_timeout() {
    // The backend writes until its writes fail; it reports how far it got.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = l.local_addr().unwrap();
    let (tx, mut cut) = mpsc::unbounded_channel::<usize>();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let chunk = vec![b'x'; 64 * 1024];
        let mut written = 0;
        while s.write_all(&chunk).await.is_ok() {
            written += chunk.len();
        }
        let _ = tx.send(written);
    });
    let (_lb, addr) = tcp_lb(backend).await;
    let _client = TcpStream::connect(addr).await.unwrap(); // never read
    let written = tokio::time::timeout(PATIENCE, cut.recv())
        .await
        .expect("lb closed the backend connection of the stalled session")
        .unwrap();
    // Socket buffers on both legs hold some, but the flood was stopped, not swallowed.
    assert!(written < 64 * 1024 * 1024, "{written} bytes went into a client that reads nothing");
}

#[tokio::test]
async fn an_idle_websocket_tunnel_is_closed_after_idle_timeout() {
    let b = TestBackend::start("a").await;
    let toml = format!(
        "[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\nidle_timeout = \"1s\"\n\n\
         [pools.app]\nstrategy = \"round_robin\"\n{}\n",
        backends_toml(&[&b])
    );
    let lb = start_lb(&toml).await;
    let addr = lb.listener_addr("web").unwrap();
    let (mut s, head) = open_websocket(addr).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    // The tunnel works...
    s.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    tokio::time::timeout(PATIENCE, s.read_exact(&mut echo)).await.unwrap().unwrap();
    assert_eq!(&echo, b"ping");
    // ...and, left silent, ends.
    let mut rest = Vec::new();
    let n = tokio::time::timeout(PATIENCE, s.read_to_end(&mut rest))
        .await
        .expect("the idle tunnel was closed")
        .expect("closed cleanly");
    assert_eq!(n, 0, "{rest:?}");
}

#[tokio::test]
async fn a_request_body_trickling_after_its_answer_does_not_hold_the_connection() {
    // A backend that answers at once, then reads (and drops) whatever comes.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                if read_head(&mut s).await.is_none() {
                    return;
                }
                let mut buf = [0u8; 4096];
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                while let Ok(1..) = s.read(&mut buf).await {}
            });
        }
    });
    let toml = format!(
        "[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\nidle_timeout = \"1s\"\n\n\
         [pools.p]\nstrategy = \"round_robin\"\nrequest_timeout = \"60s\"\nbackends = [{{ addr = \"{backend}\" }}]\n"
    );
    let lb = start_lb(&toml).await;
    let client = TcpStream::connect(lb.listener_addr("web").unwrap()).await.unwrap();
    let (mut rd, mut wr) = client.into_split();
    wr.write_all(b"POST /upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nB\r\n").await.unwrap();
    // A chunk every 200 ms, for as long as the connection takes them.
    let trickle = tokio::spawn(async move {
        while wr.write_all(b"1\r\nB\r\n").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(PATIENCE, rd.read_to_end(&mut answer)).await;
    trickle.abort();
    assert!(read.is_ok(), "the connection was still open after {PATIENCE:?}");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok"), "{answer}");
}

/// A tunnel half-closes: once the backend is done sending, what the client sends after still
/// reaches the backend, in full (lb shuts its side toward the client down but drops nothing of
/// what the client goes on sending, unlike a plain HTTP connection it is closing).
#[tokio::test]
async fn a_websocket_tunnel_half_closed_by_the_backend_still_carries_the_client_bytes() {
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let baddr = backend.local_addr().unwrap();
    let (got_tx, mut got_rx) = mpsc::channel::<Vec<u8>>(1);
    tokio::spawn(async move {
        let (mut s, _) = backend.accept().await.unwrap();
        if read_head(&mut s).await.is_none() {
            return;
        }
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
            .await
            .unwrap();
        // Done sending: half-close, then take whatever the client sends until it closes.
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got).await;
        let _ = got_tx.send(got).await;
    });
    let toml = format!(
        "[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n\n\
         [pools.app]\nstrategy = \"round_robin\"\nbackends = [{{ addr = \"{baddr}\" }}]\n"
    );
    let lb = start_lb(&toml).await;
    let (mut s, head) = open_websocket(lb.listener_addr("web").unwrap()).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    // The backend's half-close comes through as the end of the stream...
    let mut rest = Vec::new();
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut rest)).await.expect("half-close passed on").unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    // ...and the client's bytes after it still go through.
    let payload: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    s.write_all(&payload).await.unwrap();
    s.shutdown().await.unwrap();
    let got = tokio::time::timeout(PATIENCE, got_rx.recv()).await.expect("backend saw the end").unwrap();
    assert_eq!(got.len(), payload.len());
    assert!(got == payload, "the bytes differ");
}
