//! Raw-socket clients: bytes written as given, everything read back until the server closes,
//! for what an HTTP client library would refuse to send or hide (smuggling, malformed heads,
//! half a request, a WebSocket upgrade).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::PATIENCE;

/// What a raw client got back: every byte until the server closed (or the hang guard), and
/// whether it was the server that closed.
pub struct Reply {
    pub bytes: Vec<u8>,
    pub closed: bool,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    pub fn status(&self) -> u16 {
        let t = self.text();
        // "HTTP/1.1 200" (or 1.0, to an HTTP/1.0 client)
        t.strip_prefix("HTTP/1.").and_then(|r| r.get(2..5)).and_then(|c| c.parse().ok()).unwrap_or(0)
    }

    /// The response head, lowercased.
    pub fn head(&self) -> String {
        let t = self.text();
        t.split("\r\n\r\n").next().unwrap_or_default().to_ascii_lowercase()
    }
}

/// Reads until the peer closes (EOF or reset) or `limit` passes.
pub async fn read_all(s: &mut TcpStream, limit: Duration) -> Reply {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return Reply { bytes, closed: false },
            Ok(Ok(0)) | Ok(Err(_)) => return Reply { bytes, closed: true },
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
        }
    }
}

/// Sends `bytes` on a fresh connection and reads the answer until the server closes.
pub async fn send(addr: SocketAddr, bytes: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    read_all(&mut s, PATIENCE).await
}

/// Sends raw bytes on a fresh connection and returns everything read until the server closes
/// (or `timeout` passes).
pub async fn raw(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(timeout, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads from a raw stream until `needle` has been seen (or EOF), returning everything read.
pub async fn read_raw_until(s: &mut TcpStream, needle: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + PATIENCE;
    while !String::from_utf8_lossy(&got).contains(needle) {
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf)).await.expect("timed out reading").expect("read");
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Opens a WebSocket tunnel through lb at `addr` (the test backends echo on `/ws`) and returns
/// the stream with the answer's head, lowercased, read exactly up to its end.
pub async fn open_websocket(addr: SocketAddr) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).await.unwrap(), 1, "closed before the 101 head ended");
        head.push(byte[0]);
    }
    (s, String::from_utf8_lossy(&head).to_lowercase())
}

/// What a backend reads of a request: everything up to the end of the head (and whatever came
/// with it), or `None` if the peer closed or failed first. No deadline: lb's own end the
/// connection.
pub async fn read_head(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    Some(got)
}
