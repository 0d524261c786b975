//! Backends written over raw sockets, for what a well-behaved HTTP server would never do: hold
//! connections without answering, or hang up on a reused connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

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
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                counter.fetch_add(1, Ordering::SeqCst);
                // Wait for the next request on this connection, then hang up on it.
                let _ = s.read(&mut buf).await;
            });
        }
    });
    (addr, answered)
}
