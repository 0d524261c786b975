//! The PROXY protocol towards backends (`send_proxy`): v1 and v2 headers written byte for byte
//! ahead of the payload, and health probes opening with a LOCAL header.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{ip4, ppv2_tcp4, tcp_listener};
use crate::support::*;

/// Sends `payload` through a tcp listener whose pool has `send_proxy = "<version>"`, half-closes
/// and reads lb's answer to the end; returns what the backend received, the client's address
/// and the listener's.
async fn through_send_proxy(version: &str, payload: &[u8]) -> (Vec<u8>, SocketAddr, SocketAddr) {
    let (backend, mut seen) = draining_backend(b"done").await;
    let toml = format!(
        "{}[pools.p]\nstrategy = \"round_robin\"\nsend_proxy = \"{version}\"\nbackends = [{{ addr = \"{backend}\" }}]\n",
        tcp_listener("")
    );
    let lb = start_lb(&toml).await;
    let listener = lb.listener_addr("l4").unwrap();
    let mut s = TcpStream::connect(listener).await.unwrap();
    let me = s.local_addr().unwrap();
    s.write_all(payload).await.unwrap();
    s.shutdown().await.unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer, b"done");
    (seen.recv().await.unwrap(), me, listener)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_proxy_v2_writes_the_exact_header_then_the_payload() {
    let (got, me, listener) = through_send_proxy("v2", b"hello backend").await;
    let mut expected = ppv2_tcp4(ip4(me), me.port(), ip4(listener), listener.port());
    expected.extend_from_slice(b"hello backend");
    assert_eq!(got, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_proxy_v1_writes_the_text_line() {
    let (got, me, listener) = through_send_proxy("v1", b"payload").await;
    let expected = format!("PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\npayload", me.port(), listener.port());
    assert_eq!(String::from_utf8(got).unwrap(), expected);
}

/// A backend that insists on a PROXY v2 header: health probes of a send_proxy pool open with
/// a LOCAL header (the connection is lb's own), then speak HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_probes_of_a_send_proxy_pool_send_a_local_header() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let headers = Arc::new(Mutex::new(Vec::new()));
    let seen = headers.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut header = [0u8; 16];
                if s.read_exact(&mut header).await.is_err() {
                    return;
                }
                seen.lock().unwrap().push(header.to_vec());
                if header != *b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00" {
                    return; // not LOCAL: hang up, the probe fails
                }
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await;
            });
        }
    });
    let toml = format!(
        "{}[pools.p]\nstrategy = \"round_robin\"\nsend_proxy = \"v2\"\nbackends = [{{ addr = \"{addr}\", name = \"pp\" }}]\n\
         [pools.p.health]\nkind = \"http\"\ninterval = \"100ms\"\nrise = 1\nfall = 1\n",
        tcp_listener("")
    );
    let lb = start_lb(&toml).await;
    let pool = lb.pool("p").unwrap().clone();
    let checked = || pool.load().backends[0].health().last_check().0 == lb::internals::CheckResult::Success;
    assert!(eventually(Duration::from_secs(5), checked).await, "{:?}", pool.load().backends[0].health().last_check());
    assert_eq!(up_names(&lb, "p"), ["pp"]);
}
