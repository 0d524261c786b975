//! Backends written over raw sockets, for what a well-behaved HTTP server would never do (hold
//! connections without answering, hang up on a reused connection) and for plain TCP sessions
//! read to their end.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::read_head;

/// A backend that accepts connections and never answers (nor closes them).
pub async fn black_hole() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    (addr, task)
}

/// A raw HTTP/1.1 backend that answers the first request on each connection (keeping the
/// connection open) and closes the connection without answering when a second request arrives
/// on it, the way a backend's idle-connection timeout races with a reused connection.
/// Returns the address and a counter of answered requests.
pub async fn closes_reused_connections() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answered = Arc::new(AtomicUsize::new(0));
    let counter = answered.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                if read_head(&mut s).await.is_none() {
                    return;
                }
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                counter.fetch_add(1, Ordering::SeqCst);
                // Wait for the next request on this connection, then hang up on it.
                let _ = s.read(&mut [0u8; 8192]).await;
            });
        }
    });
    (addr, answered)
}

/// A TCP backend that reads each connection to its end (the client's half-close), reports what
/// it got, then writes `answer` and closes.
pub async fn draining_backend(answer: &'static [u8]) -> (SocketAddr, mpsc::UnboundedReceiver<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let _ = s.read_to_end(&mut got).await;
                let _ = tx.send(got);
                let _ = s.write_all(answer).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, rx)
}
