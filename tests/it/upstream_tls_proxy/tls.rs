//! TLS to backends: HTTPS backends checked against a configured CA with SNI (and connections
//! reused), IP backends checked against IP names without SNI, a certificate from another CA
//! refused (502, a passive failure), tcp mode over TLS, health checks over TLS, bytes held inside
//! TLS after an answer, and a reload that turns TLS on.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::{exchange, http_listener, make_ca, make_leaf, server_config, tcp_listener, write_ca};
use crate::support::*;

/// A TLS backend: records the SNI of every handshake, then serves HTTP/1.1 (answers its name,
/// `/health` 200, records `x-forwarded-for`) or, with `echo`, echoes bytes until EOF.
#[derive(Clone)]
struct TlsBackend {
    addr: SocketAddr,
    sni: Arc<Mutex<Vec<Option<String>>>>,
    forwarded_for: Arc<Mutex<Vec<String>>>,
    requests: Arc<AtomicUsize>,
}

impl TlsBackend {
    async fn start(
        name: &'static str,
        leaf: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
        echo: bool,
    ) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let b = TlsBackend {
            addr: l.local_addr().unwrap(),
            sni: Arc::default(),
            forwarded_for: Arc::default(),
            requests: Arc::default(),
        };
        let acceptor = TlsAcceptor::from(server_config(leaf));
        let me = b.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let (acceptor, me) = (acceptor.clone(), me.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(s).await else { return };
                    me.sni.lock().unwrap().push(tls.get_ref().1.server_name().map(str::to_owned));
                    if echo {
                        let mut buf = vec![0u8; 16 * 1024];
                        while let Ok(n @ 1..) = tls.read(&mut buf).await {
                            if tls.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                        let _ = tls.write_all(b"|tls tail").await;
                        let _ = tls.shutdown().await;
                        return;
                    }
                    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let me = me.clone();
                        async move {
                            if req.uri().path() != "/health" {
                                me.requests.fetch_add(1, Ordering::SeqCst);
                                let xff = req.headers().get("x-forwarded-for").map(|v| v.to_str().unwrap().to_owned());
                                me.forwarded_for.lock().unwrap().push(xff.unwrap_or_default());
                            }
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(name))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc).await;
                });
            }
        });
        b
    }
}

/// An HTTPS backend whose answer to `GET /size/N` is exactly N bytes (head and body), followed
/// in the same TCP write by a second, unasked answer `evil` in a TLS record of its own. Any
/// other request gets `fresh`, and the connection closes. rustls decrypts both records from one socket read but hands
/// out plaintext only as far as the reader's buffer goes: when N is the size of lb's read
/// buffer, `evil` waits inside rustls while the socket itself is quiet.
async fn trailing_record_backend(leaf: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server_config(leaf));
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // Buffered below TLS: records reach the socket only on flush, together.
                let Ok(mut tls) = acceptor.accept(tokio::io::BufWriter::with_capacity(64 * 1024, s)).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                loop {
                    head.clear();
                    while !head.ends_with(b"\r\n\r\n") {
                        match tls.read(&mut byte).await {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    let line = String::from_utf8_lossy(&head).lines().next().unwrap_or_default().to_owned();
                    let size =
                        line.split(' ').nth(1).and_then(|p| p.strip_prefix("/size/")).and_then(|n| n.parse().ok());
                    let answer = |body: &[u8]| {
                        let mut a = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
                        a.extend_from_slice(body);
                        a
                    };
                    if let Some(total) = size {
                        // The body length whose answer is `total` bytes in all.
                        let body_len = (0..total).find(|&n: &usize| answer(&vec![b'x'; n]).len() == total).unwrap();
                        let _ = tls.write_all(&answer(&vec![b'x'; body_len])).await;
                        let _ = tls.write_all(&answer(b"evil")).await;
                    } else {
                        // Not kept: every /size request then starts on a new connection, with
                        // lb's read buffer at its initial size.
                        let _ = tls
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nfresh")
                            .await;
                        let _ = tls.flush().await;
                        let _ = tls.shutdown().await;
                        return;
                    }
                    if tls.flush().await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// `listener` (see [`http_listener`], [`tcp_listener`]) and its pool "p" with `tls = true`, the
/// CA file `ca`, `tls_sni` when given, then `rest` (the backends and anything after them).
fn tls_pool(listener: &str, ca: &Path, sni: Option<&str>, rest: &str) -> String {
    let sni = sni.map(|name| format!("tls_sni = \"{name}\"\n")).unwrap_or_default();
    format!("{listener}[pools.p]\nstrategy = \"round_robin\"\ntls = true\ntls_ca = \"{}\"\n{sni}{rest}\n", ca.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_backend_with_a_configured_ca_and_sni_and_reused_connections() {
    let dir = temp_dir("https");
    let ca = make_ca("lb test CA");
    let ca_path = write_ca(&dir, "ca.pem", &ca);
    let backend = TlsBackend::start("secure", make_leaf(&ca, &["backend.test"]), false).await;
    let backends = format!("backends = [{{ addr = \"{}\" }}]", backend.addr);
    let toml = tls_pool(&http_listener(""), &ca_path, Some("backend.test"), &backends);
    let lb = start_lb(&toml).await;
    let addr = lb.listener_addr("web").unwrap();
    let mut conn = Conn::open(addr).await;
    for _ in 0..3 {
        let (status, body) = conn.get("/hello").await.unwrap();
        assert_eq!((status, body.as_str()), (200, "secure"));
    }
    assert_eq!(backend.sni.lock().unwrap().clone(), vec![Some("backend.test".to_string())], "one handshake, with SNI");
    assert_eq!(backend.requests.load(Ordering::SeqCst), 3);
    assert_eq!(backend.forwarded_for.lock().unwrap()[0], "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_held_inside_tls_after_an_answer_keep_its_connection_out_of_the_pool() {
    let ca = make_ca("lb test CA");
    let dir = temp_dir("trailing");
    let ca_path = write_ca(&dir, "ca.pem", &ca);
    let backend = trailing_record_backend(make_leaf(&ca, &["backend.test"])).await;
    let backends = format!("backends = [{{ addr = \"{backend}\" }}]");
    let toml = tls_pool(&http_listener(""), &ca_path, Some("backend.test"), &backends);
    let lb = start_lb(&toml).await;
    let mut conn = Conn::open(lb.listener_addr("web").unwrap()).await;
    // Read buffers come in powers of two: one of these sizes is lb's.
    for size in [4096, 8192, 16384, 32768] {
        let (status, body) = conn.get(&format!("/size/{size}")).await.unwrap();
        assert_eq!(status, 200);
        assert!(body.len() < size && body.bytes().all(|b| b == b'x'), "size {size}");
        let (status, body) = conn.get("/next").await.unwrap();
        assert_eq!((status, body.as_str()), (200, "fresh"), "after /size/{size}: an answer nobody asked for");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_backends_are_checked_against_ip_names_without_sni_and_tls_false_overrides_the_pool() {
    let dir = temp_dir("ipname");
    let ca = make_ca("lb test CA");
    let ca_path = write_ca(&dir, "ca.pem", &ca);
    let secure = TlsBackend::start("secure", make_leaf(&ca, &["127.0.0.1"]), false).await;
    let plain = TestBackend::start("plain").await;
    let backends =
        format!("backends = [{{ addr = \"{}\" }}, {{ addr = \"{}\", tls = false }}]", secure.addr, plain.addr);
    let toml = tls_pool(&http_listener(""), &ca_path, None, &backends);
    let lb = start_lb(&toml).await;
    let addr = lb.listener_addr("web").unwrap();
    let client = client();
    let mut bodies = Vec::new();
    for _ in 0..4 {
        let (status, body, _) = get(&client, addr, "/").await;
        assert_eq!(status, 200);
        bodies.push(body);
    }
    bodies.sort();
    assert_eq!(bodies, ["plain", "plain", "secure", "secure"]);
    assert_eq!(secure.sni.lock().unwrap()[0], None, "an IP address is not sent as SNI");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_a_502_and_a_passive_failure() {
    let dir = temp_dir("wrongca");
    let (ca, other) = (make_ca("trusted"), make_ca("someone else"));
    let ca_path = write_ca(&dir, "ca.pem", &ca);
    let backend = TlsBackend::start("impostor", make_leaf(&other, &["backend.test"]), false).await;
    let backends = format!("backends = [{{ addr = \"{}\", name = \"impostor\" }}]", backend.addr);
    let toml = tls_pool(&http_listener(""), &ca_path, Some("backend.test"), &backends);
    let lb = start_lb(&toml).await;
    let addr = lb.listener_addr("web").unwrap();
    let client = client();
    // fall = 3 (the default): three refused handshakes take it down. Out by live traffic alone
    // and the pool's only backend, it is still tried (and refused again).
    for i in 0..3 {
        let (status, _, _) = get(&client, addr, "/").await;
        assert_eq!(status, 502, "request {i}");
    }
    assert!(healthy_names(&lb, "p").is_empty(), "the backend counts as failed");
    assert_eq!(get(&client, addr, "/").await.0, 502);
    assert_eq!(backend.requests.load(Ordering::SeqCst), 0, "no request went to the impostor");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_mode_to_a_tls_backend() {
    let dir = temp_dir("tcptls");
    let ca = make_ca("lb test CA");
    let ca_path = write_ca(&dir, "ca.pem", &ca);
    let backend = TlsBackend::start("echo", make_leaf(&ca, &["echo.test"]), true).await;
    let backends = format!("backends = [{{ addr = \"{}\" }}]", backend.addr);
    let toml = tls_pool(&tcp_listener(""), &ca_path, Some("echo.test"), &backends);
    let lb = start_lb(&toml).await;
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let got = exchange(lb.listener_addr("l4").unwrap(), &payload).await;
    assert_eq!(got.len(), payload.len() + b"|tls tail".len());
    assert!(got[..payload.len()] == payload[..], "bytes changed in transit");
    assert_eq!(&got[payload.len()..], b"|tls tail", "half-close crossed TLS");
    assert_eq!(backend.sni.lock().unwrap().clone(), vec![Some("echo.test".to_string())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_run_over_tls_and_a_wrong_ca_is_down() {
    let dir = temp_dir("health");
    let (ca, other) = (make_ca("trusted"), make_ca("someone else"));
    let ca_path = write_ca(&dir, "ca.pem", &ca);
    let good = TlsBackend::start("good", make_leaf(&ca, &["backend.test"]), false).await;
    let bad = TlsBackend::start("bad", make_leaf(&other, &["backend.test"]), false).await;
    let rest = format!(
        "backends = [{{ addr = \"{}\", name = \"good\" }}, {{ addr = \"{}\", name = \"bad\" }}]\n\
         [pools.p.health]\nkind = \"http\"\npath = \"/health\"\ninterval = \"100ms\"\ntimeout = \"1s\"\nrise = 1\nfall = 1",
        good.addr, bad.addr
    );
    let toml = tls_pool(&http_listener(""), &ca_path, Some("backend.test"), &rest);
    let lb = start_lb(&toml).await;
    assert!(eventually(Duration::from_secs(5), || up_names(&lb, "p") == ["good"]).await, "{:?}", up_names(&lb, "p"));
    let pool = lb.pool("p").unwrap().load_full();
    let (_, reason) = pool.backends[1].health().last_check();
    assert!(reason.contains("TLS"), "{reason}");
    // The good backend stays up: its probes succeed, over TLS with the configured name.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(up_names(&lb, "p"), ["good"]);
    assert!(good.sni.lock().unwrap().iter().all(|s| s.as_deref() == Some("backend.test")));
    assert_eq!(good.requests.load(Ordering::SeqCst), 0, "probes are not counted as requests");
}

/// A backend that speaks TLS or plain HTTP on the same port, by the first byte (0x16 starts a
/// TLS handshake); answers `tls` or `plain`.
async fn dual_backend(leaf: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server_config(leaf));
    let handshakes = Arc::new(AtomicUsize::new(0));
    let counted = handshakes.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (acceptor, counted) = (acceptor.clone(), counted.clone());
            tokio::spawn(async move {
                let mut first = [0u8; 1];
                if s.peek(&mut first).await.is_err() {
                    return;
                }
                let answer = |what: &'static str| {
                    hyper::service::service_fn(move |_req: http::Request<hyper::body::Incoming>| async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(what))))
                    })
                };
                let h1 = hyper::server::conn::http1::Builder::new();
                if first[0] == 0x16 {
                    let Ok(tls) = acceptor.accept(s).await else { return };
                    counted.fetch_add(1, Ordering::SeqCst);
                    let _ = h1.serve_connection(TokioIo::new(tls), answer("tls")).await;
                } else {
                    let _ = h1.serve_connection(TokioIo::new(s), answer("plain")).await;
                }
            });
        }
    });
    (addr, handshakes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_turns_tls_on_drops_the_idle_plain_connections() {
    let dir = temp_dir("reloadtls");
    let ca = make_ca("lb test CA");
    let ca_path = write_ca(&dir, "ca.pem", &ca);
    let (backend, handshakes) = dual_backend(make_leaf(&ca, &["backend.test"])).await;
    let config = |tls: &str| {
        let text = format!(
            "{}[pools.p]\nstrategy = \"round_robin\"\n{tls}\nbackends = [{{ addr = \"{backend}\", name = \"b\" }}]\n",
            http_listener("")
        );
        lb::config::parse(Path::new("lb.toml"), &text).unwrap().config
    };
    let mut lb = lb::app::Running::start(config("")).await.unwrap();
    let addr = lb.listener_addr("web").unwrap();
    let mut conn = Conn::open(addr).await;
    assert_eq!(conn.get("/").await.unwrap().1, "plain");
    assert_eq!(conn.get("/").await.unwrap().1, "plain", "the idle connection is reused");

    let changes = lb
        .apply(config(&format!("tls = true\ntls_ca = \"{}\"\ntls_sni = \"backend.test\"", ca_path.display())))
        .unwrap();
    assert!(changes.items.iter().any(|c| c.contains("TLS")), "{changes:?}");
    assert_eq!(conn.get("/").await.unwrap().1, "tls", "not the pooled plain connection");
    assert_eq!(conn.get("/").await.unwrap().1, "tls");
    assert_eq!(handshakes.load(Ordering::SeqCst), 1, "the TLS connection is pooled in turn");

    lb.apply(config("")).unwrap();
    assert_eq!(conn.get("/").await.unwrap().1, "plain", "and back");
}
