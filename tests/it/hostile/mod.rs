//! Hostile clients and backends over raw sockets (README, "Hostile input and limits"): request
//! smuggling and malformed heads, the size limits, slowloris and idle connections, the
//! connection limit, a TLS client that never says hello, file-descriptor exhaustion, HTTP/2
//! rapid reset and CONTINUATION floods, and backends that answer garbage or die mid-response.
//!
//! Each refusal is checked for its status, for the connection being closed, for the backend
//! having seen nothing, and for a normal request right after it being served. Every wait has a
//! generous hang guard ([`PATIENCE`]); no test asserts how fast something happened.

mod backends;
mod connections;
mod http2;
mod limits;
mod smuggling;
mod timeouts;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use crate::support::*;

fn config(backends: &str, listener_extra: &str) -> String {
    format!(
        "[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n{listener_extra}\n\n\
         [pools.app]\nstrategy = \"round_robin\"\n{backends}\n"
    )
}

async fn lb_with(listener_extra: &str) -> (TestBackend, lb::app::Running, SocketAddr) {
    let b = TestBackend::start("a").await;
    let lb = start_lb(&config(&backends_toml(&[&b]), listener_extra)).await;
    let addr = lb.listener_addr("web").unwrap();
    (b, lb, addr)
}

/// A plain request on a new connection must be served by the backend.
async fn normal_request_is_served(addr: SocketAddr, b: &TestBackend) {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let path = format!("/normal/{}", N.fetch_add(1, Ordering::Relaxed));
    let r = send(addr, format!("GET {path} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").as_bytes()).await;
    assert_eq!(r.status(), 200, "a normal request after the hostile one: {}", r.text());
    assert!(r.text().ends_with("\r\n\r\na"), "{}", r.text());
    assert!(b.seen.lock().unwrap().iter().any(|s| s.uri == path), "{path} did not reach the backend");
}
