//! The PROXY protocol from a fronting proxy (`accept_proxy`): v1/v2 addresses become
//! X-Forwarded-For, are relayed to a send_proxy backend, are read before TLS and in pieces; a
//! connection without a valid header is closed unserved.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, KeyPair};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{exchange, http_listener, make_ca, ppv2_tcp4, tcp_listener};
use crate::support::*;

fn request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n").into_bytes()
}

/// Writes `header` then a GET on a fresh connection; returns the whole answer.
async fn get_with_header(addr: SocketAddr, header: &[u8]) -> String {
    let mut bytes = header.to_vec();
    bytes.extend_from_slice(&request("/pp"));
    raw(addr, &bytes, Duration::from_secs(5)).await
}

/// An lb whose http listener "web" reads PROXY headers (`accept_proxy = true`, then `extra`
/// lines), in front of one [`TestBackend`]; returns the backend, lb and the listener's address.
async fn accept_proxy_lb(extra: &str) -> (TestBackend, lb::app::Running, SocketAddr) {
    let backend = TestBackend::start("app").await;
    let toml = format!(
        "{}[pools.p]\nstrategy = \"round_robin\"\n{}\n",
        http_listener(&format!("accept_proxy = true\n{extra}")),
        backends_toml(&[&backend])
    );
    let lb = start_lb(&toml).await;
    let addr = lb.listener_addr("web").unwrap();
    (backend, lb, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_proxy_v2_and_v1_addresses_become_x_forwarded_for() {
    let (backend, _lb, addr) = accept_proxy_lb("").await;

    let v2 = ppv2_tcp4([203, 0, 113, 7], 4242, [192, 0, 2, 1], 443);
    let headers: [(&[u8], &str); 5] = [
        (&v2, "203.0.113.7"),
        (b"PROXY TCP4 198.51.100.9 192.0.2.1 5555 80\r\n", "198.51.100.9"),
        (b"PROXY TCP6 2001:db8::42 2001:db8::1 5555 80\r\n", "2001:db8::42"),
        // LOCAL (a health check of the fronting proxy) and UNKNOWN keep the socket's address.
        (b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00", "127.0.0.1"),
        (b"PROXY UNKNOWN\r\n", "127.0.0.1"),
    ];
    for (header, client) in headers {
        let answer = get_with_header(addr, header).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{client}: {answer}");
        assert_eq!(backend.last_seen().headers["x-forwarded-for"], client);
    }
    assert_eq!(backend.hits(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_proxy_addresses_are_relayed_to_a_send_proxy_backend() {
    let (backend, mut seen) = draining_backend(b"done").await;
    let toml = format!(
        "{}[pools.p]\nstrategy = \"round_robin\"\nsend_proxy = \"v2\"\nbackends = [{{ addr = \"{backend}\" }}]\n",
        tcp_listener("accept_proxy = true")
    );
    let lb = start_lb(&toml).await;
    let addr = lb.listener_addr("l4").unwrap();
    // The fronting proxy speaks v1; lb relays the same endpoints in v2.
    let answer = exchange(addr, b"PROXY TCP4 203.0.113.7 192.0.2.1 4242 443\r\nfirst bytes").await;
    assert_eq!(answer, b"done");
    let mut expected = ppv2_tcp4([203, 0, 113, 7], 4242, [192, 0, 2, 1], 443);
    expected.extend_from_slice(b"first bytes");
    assert_eq!(seen.recv().await.unwrap(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_valid_header_nothing_is_served() {
    let (backend, _lb, addr) = accept_proxy_lb("header_timeout = \"300ms\"").await;
    // A plain request: no header at all.
    assert_eq!(raw(addr, &request("/plain"), Duration::from_secs(5)).await, "");
    // Garbage: a corrupted v2 signature, a v1 line with a bad address, a bad v2 command.
    let mut bad_sig = ppv2_tcp4([203, 0, 113, 7], 1, [192, 0, 2, 1], 2);
    bad_sig[8] = b'X';
    assert_eq!(get_with_header(addr, &bad_sig).await, "");
    assert_eq!(get_with_header(addr, b"PROXY TCP4 203.0.113.300 192.0.2.1 1 2\r\n").await, "");
    let mut bad_cmd = ppv2_tcp4([203, 0, 113, 7], 1, [192, 0, 2, 1], 2);
    bad_cmd[12] = 0x22;
    assert_eq!(get_with_header(addr, &bad_cmd).await, "");
    // Half a header, then silence: closed when header_timeout passes.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&bad_sig[..10]).await.unwrap();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(matches!(closed, Ok(Ok(0))), "{closed:?}");
    assert_eq!(backend.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_arriving_in_pieces_works() {
    let (backend, _lb, addr) = accept_proxy_lb("").await;
    let headers: [(&[u8], &str); 2] = [
        (&ppv2_tcp4([203, 0, 113, 8], 4242, [192, 0, 2, 1], 443), "203.0.113.8"),
        (b"PROXY TCP4 198.51.100.10 192.0.2.1 5555 80\r\n", "198.51.100.10"),
    ];
    for (header, client) in headers {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        for piece in header.chunks(3) {
            s.write_all(piece).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The request follows in the same segment as the last piece would in real life.
        s.write_all(&request("/pieces")).await.unwrap();
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out)).await.unwrap().unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert_eq!(backend.last_seen().headers["x-forwarded-for"], client);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_comes_before_tls_on_a_tls_listener() {
    let dir = temp_dir("pptls");
    let ca = make_ca("lb test CA");
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["lb.test".to_string()]).unwrap().signed_by(&key, &ca.issuer).unwrap();
    std::fs::write(dir.join("lb.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("lb.key"), key.serialize_pem()).unwrap();
    let tls = format!("tls = [{{ cert = \"{d}/lb.pem\", key = \"{d}/lb.key\" }}]", d = dir.display());
    let (backend, _lb, addr) = accept_proxy_lb(&tls).await;

    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&ppv2_tcp4([203, 0, 113, 9], 4242, [192, 0, 2, 1], 443)).await.unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der.clone()).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tls = TlsConnector::from(Arc::new(cfg)).connect(ServerName::try_from("lb.test").unwrap(), tcp).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/over-tls").header("host", "lb.test").body(Full::new(Bytes::new())).unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "app");
    let seen = backend.last_seen();
    assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.9");
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
}
