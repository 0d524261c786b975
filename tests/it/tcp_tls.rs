//! L4 tcp mode and TLS termination over real sockets: bytes through unchanged, sessions spread
//! exactly, dead backends cost nothing, half-close propagates; SNI picks the certificate, an
//! unknown name gets the default, ALPN h2 works end to end, TLS 1.1 is refused, and a replaced
//! certificate is served after a reload.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

use crate::support::*;

/// A TCP backend that echoes everything until the client half-closes, then writes `tail`
/// and closes.
async fn echo_backend(tail: &'static [u8]) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = s.write_all(tail).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// A TCP backend that writes its name and closes.
async fn name_backend(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.write_all(name.as_bytes()).await;
            let _ = s.shutdown().await;
        }
    });
    addr
}

fn tcp_config(backends: &[SocketAddr], extra_listener: &str) -> String {
    let list: Vec<String> = backends.iter().map(|a| format!("{{ addr = \"{a}\" }}")).collect();
    format!(
        "[[listeners]]\nname = \"l4\"\nbind = \"127.0.0.1:0\"\nmode = \"tcp\"\npool = \"p\"\n{extra_listener}\n\n\
         [pools.p]\nstrategy = \"round_robin\"\nconnect_timeout = \"500ms\"\nbackends = [{}]\n",
        list.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mebibyte_passes_byte_identical_and_half_close_propagates() {
    let backend = echo_backend(b"|tail after eof").await;
    let lb = start_lb(&tcp_config(&[backend], "")).await;
    let mut s = TcpStream::connect(lb.listener_addr("l4").unwrap()).await.unwrap();
    let payload: Vec<u8> = (0..1024 * 1024u32).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
    let (mut r, mut w) = s.split();
    let write = async {
        w.write_all(&payload).await.unwrap();
        // Half-close: the backend sees EOF, yet our read side stays open for its answer.
        w.shutdown().await.unwrap();
    };
    let mut got = Vec::new();
    let read = r.read_to_end(&mut got);
    let (_, n) = tokio::join!(write, read);
    n.unwrap();
    assert_eq!(got.len(), payload.len() + b"|tail after eof".len());
    assert!(got[..payload.len()] == payload[..], "bytes changed in transit");
    assert_eq!(&got[payload.len()..], b"|tail after eof");
    // lb_tcp_bytes_total counts exactly what crossed, both ways.
    let text = lb.metrics().render();
    let counted = |dir: &str| {
        text.lines()
            .find(|l| l.starts_with("lb_tcp_bytes_total{") && l.contains(&format!("direction=\"{dir}\"")))
            .and_then(|l| l.rsplit(' ').next())
            .map(|v| v.to_string())
    };
    assert_eq!(counted("in").as_deref(), Some(payload.len().to_string().as_str()));
    assert_eq!(counted("out").as_deref(), Some((payload.len() + 15).to_string().as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_sessions_exactly_and_dead_backends_cost_nothing() {
    let (a, b, c) = (name_backend("a").await, name_backend("b").await, name_backend("c").await);
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let lb = start_lb(&tcp_config(&[a, b, c], "")).await;
    let addr = lb.listener_addr("l4").unwrap();
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..30 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut name = String::new();
        s.read_to_string(&mut name).await.unwrap();
        *counts.entry(name).or_insert(0) += 1;
    }
    assert_eq!(counts.into_iter().collect::<Vec<_>>(), vec![("a".into(), 10), ("b".into(), 10), ("c".into(), 10)]);

    let lb = start_lb(&tcp_config(&[a, dead, b], "")).await;
    let addr = lb.listener_addr("l4").unwrap();
    for i in 0..30 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut name = String::new();
        s.read_to_string(&mut name).await.unwrap();
        assert!(name == "a" || name == "b", "session {i} got {name:?}");
    }
}

// ---- TLS ----

fn connector(alpn: &[&[u8]]) -> TlsConnector {
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny::default()))
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(cfg))
}

/// Handshakes with `sni` and returns the stream and the leaf certificate presented.
async fn handshake(
    addr: SocketAddr,
    sni: &str,
    alpn: &[&[u8]],
) -> (tokio_rustls::client::TlsStream<TcpStream>, CertificateDer<'static>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = connector(alpn).connect(ServerName::try_from(sni.to_string()).unwrap(), tcp).await.unwrap();
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned();
    (tls, leaf)
}

fn tls_http_config(dir: &Path, backend: &TestBackend) -> String {
    format!(
        "[[listeners]]\nname = \"https\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n\
         tls = [{{ cert = \"{d}/a.pem\", key = \"{d}/a.key\" }}, {{ cert = \"{d}/b.pem\", key = \"{d}/b.key\" }}]\n\n\
         [pools.app]\nstrategy = \"round_robin\"\n{}\n",
        backends_toml(&[backend]),
        d = dir.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_and_unknown_names_get_the_default() {
    let dir = temp_dir("sni");
    let (a, b) = (make_cert(&["a.example"]), make_cert(&["b.example", "*.b.example"]));
    write_pair(&dir, "a", &a);
    write_pair(&dir, "b", &b);
    let backend = TestBackend::start("app").await;
    let lb = start_lb(&tls_http_config(&dir, &backend)).await;
    let addr = lb.listener_addr("https").unwrap();
    assert_eq!(handshake(addr, "a.example", &[]).await.1, a.der);
    assert_eq!(handshake(addr, "b.example", &[]).await.1, b.der);
    assert_eq!(handshake(addr, "www.b.example", &[]).await.1, b.der, "wildcard");
    assert_eq!(handshake(addr, "unknown.example", &[]).await.1, a.der, "default is the first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_h2_works_end_to_end_with_forwarded_proto_https() {
    let dir = temp_dir("alpn");
    write_pair(&dir, "a", &make_cert(&["a.example"]));
    write_pair(&dir, "b", &make_cert(&["b.example"]));
    let backend = TestBackend::start("app").await;
    let lb = start_lb(&tls_http_config(&dir, &backend)).await;
    let (tls, _) = handshake(lb.listener_addr("https").unwrap(), "a.example", &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("https://a.example/secure").body(Full::new(Bytes::new())).unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "app");
    let seen = backend.last_seen();
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(seen.headers["x-forwarded-host"], "a.example");

    // http/1.1 over TLS on the same listener.
    let (tls, _) = handshake(lb.listener_addr("https").unwrap(), "a.example", &[b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/h1").header("host", "a.example").body(Full::new(Bytes::new())).unwrap();
    assert_eq!(send.send_request(req).await.unwrap().status(), 200);
}

/// A TLS 1.1 ClientHello (no supported_versions extension) gets an alert, never a ServerHello.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_1_is_refused() {
    let dir = temp_dir("v11");
    write_pair(&dir, "a", &make_cert(&["a.example"]));
    write_pair(&dir, "b", &make_cert(&["b.example"]));
    let backend = TestBackend::start("app").await;
    let lb = start_lb(&tls_http_config(&dir, &backend)).await;
    let mut hello = vec![0x03, 0x02]; // client_version TLS 1.1
    hello.extend_from_slice(&[7u8; 32]); // random
    hello.push(0); // session id
    hello.extend_from_slice(&[0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f]); // ECDHE-RSA-AES128-SHA, AES128-SHA
    hello.extend_from_slice(&[0x01, 0x00]); // null compression
    let mut handshake = vec![0x01, 0x00, (hello.len() >> 8) as u8, hello.len() as u8];
    handshake.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x02, (handshake.len() >> 8) as u8, handshake.len() as u8];
    record.extend_from_slice(&handshake);
    let mut s = TcpStream::connect(lb.listener_addr("https").unwrap()).await.unwrap();
    s.write_all(&record).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await.unwrap().unwrap();
    assert_eq!(answer.first(), Some(&0x15), "expected an alert record, got {answer:?}");
    assert!(answer.len() <= 7, "more than one alert: {answer:?}");
    assert_eq!(backend.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_terminates_in_tcp_mode_too() {
    let dir = temp_dir("tcp");
    write_pair(&dir, "a", &make_cert(&["a.example"]));
    let backend = echo_backend(b"").await;
    let extra = format!("tls = [{{ cert = \"{d}/a.pem\", key = \"{d}/a.key\" }}]", d = dir.display());
    let lb = start_lb(&tcp_config(&[backend], &extra)).await;
    let (mut tls, _) = handshake(lb.listener_addr("l4").unwrap(), "a.example", &[]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), None, "no ALPN in tcp mode");
    tls.write_all(b"plaintext behind TLS").await.unwrap();
    let mut buf = [0u8; 20];
    tls.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"plaintext behind TLS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_certificate_is_served_after_reload_and_a_broken_one_is_refused() {
    let dir = temp_dir("reload");
    let (old_a, b) = (make_cert(&["a.example"]), make_cert(&["b.example"]));
    write_pair(&dir, "a", &old_a);
    write_pair(&dir, "b", &b);
    let backend = TestBackend::start("app").await;
    let path = dir.join("lb.toml");
    std::fs::write(&path, tls_http_config(&dir, &backend)).unwrap();
    let mut lb = lb::app::Running::start(lb::config::load(&path).unwrap().config).await.unwrap();
    let addr = lb.listener_addr("https").unwrap();
    assert_eq!(handshake(addr, "a.example", &[]).await.1, old_a.der);

    let new_a = make_cert(&["a.example"]);
    write_pair(&dir, "a", &new_a);
    lb.reload(&path).await.unwrap();
    assert_eq!(handshake(addr, "a.example", &[]).await.1, new_a.der, "renewed certificate served");

    std::fs::write(dir.join("a.pem"), "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n").unwrap();
    let err = lb.reload(&path).await.unwrap_err().to_string();
    assert!(err.contains("a.pem"), "{err}");
    assert_eq!(handshake(addr, "a.example", &[]).await.1, new_a.der, "old certificate kept");
}

/// A TLS-terminated tcp session whose backend sends a long answer and then keeps the
/// connection open (any keep-alive protocol), to clients that read nothing for a while: every
/// byte must still arrive. rustls may accept bytes to write while the socket is full and hold
/// them until flushed; nothing else would push them out once the backend goes quiet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_session_delivers_its_whole_answer_while_the_backend_stays_open() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut len = [0u8; 4];
                if s.read_exact(&mut len).await.is_err() {
                    return;
                }
                let _ = s.write_all(&vec![7u8; u32::from_be_bytes(len) as usize]).await;
                // Then silence, with the connection open.
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
        }
    });
    let dir = temp_dir("held-tail");
    write_pair(&dir, "a", &make_cert(&["a.example"]));
    let extra = format!("tls = [{{ cert = \"{d}/a.pem\", key = \"{d}/a.key\" }}]", d = dir.display());
    let lb = start_lb(&tcp_config(&[backend], &extra)).await;
    let addr = lb.listener_addr("l4").unwrap();
    let mut sessions = Vec::new();
    for i in 0..24u32 {
        sessions.push(tokio::spawn(async move {
            let len = 2_000_000 + i as usize * 100_000;
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.set_recv_buffer_size(4096).unwrap();
            let tcp = sock.connect(addr).await.unwrap();
            let mut tls = connector(&[]).connect(ServerName::try_from("a.example").unwrap(), tcp).await.unwrap();
            tls.write_all(&(len as u32).to_be_bytes()).await.unwrap();
            tls.flush().await.unwrap();
            // Not reading yet: every buffer on the way fills up.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = 0;
            let _ = tokio::time::timeout(Duration::from_secs(15), async {
                while got < len {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => got += k,
                    }
                }
            })
            .await;
            (len, got)
        }));
    }
    let mut short = Vec::new();
    for s in sessions {
        let (len, got) = s.await.unwrap();
        if got != len {
            short.push((len, got));
        }
    }
    assert!(short.is_empty(), "sessions missing the end of their answer (length, received): {short:?}");
}

/// Shutdown does not wait for a TLS handshake or a PROXY header that never comes (they have
/// `header_timeout`, 60 s here, of their own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_a_handshake_or_proxy_header_that_never_comes() {
    let backend = echo_backend(b"").await;
    let dir = temp_dir("silent");
    write_pair(&dir, "a", &make_cert(&["a.example"]));
    for extra in [
        format!("header_timeout = \"60s\"\ntls = [{{ cert = \"{d}/a.pem\", key = \"{d}/a.key\" }}]", d = dir.display()),
        "header_timeout = \"60s\"\naccept_proxy = true".to_string(),
    ] {
        let lb = start_lb(&tcp_config(&[backend], &extra)).await;
        let _silent = TcpStream::connect(lb.listener_addr("l4").unwrap()).await.unwrap();
        // Let lb accept it.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let drained = tokio::time::timeout(Duration::from_secs(20), lb.shutdown(Duration::from_secs(120)))
            .await
            .unwrap_or_else(|_| panic!("shutdown waited for a silent connection ({extra})"));
        assert!(drained, "{extra}");
    }
}
