//! TLS to backends and the PROXY protocol, over real sockets on 127.0.0.1 with certificates made
//! by rcgen: HTTPS backends checked against a configured CA with SNI (and connections reused),
//! a certificate from another CA refused (502, a passive failure), tcp mode over TLS,
//! health checks over TLS; PROXY v1/v2 headers written to tcp backends byte for byte, and read
//! from fronting proxies on `accept_proxy` listeners (X-Forwarded-For, relayed on, before TLS,
//! in pieces), with connections lacking a valid header closed unserved; `--check` errors.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::support::*;

// ---- certificates ----

struct Ca {
    pem: String,
    der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

fn make_ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca { pem: cert.pem(), der: cert.der().clone(), issuer: Issuer::new(params, key) }
}

/// A leaf certificate for `names` (DNS names or IP addresses) signed by `ca`.
fn make_leaf(ca: &Ca, names: &[&str]) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let params = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (vec![cert.der().clone()], PrivateKeyDer::try_from(key.serialize_der()).unwrap())
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lb-upstream-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes `ca` as `dir/NAME` and returns the path.
fn write_ca(dir: &Path, name: &str, ca: &Ca) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, &ca.pem).unwrap();
    p
}

fn server_config(leaf: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)) -> Arc<rustls::ServerConfig> {
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(leaf.0, leaf.1)
        .unwrap();
    Arc::new(cfg)
}

// ---- backends ----

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

/// A TCP backend that reads everything until EOF, hands it over, and answers `done`.
async fn recording_backend() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let _ = s.read_to_end(&mut got).await;
                let _ = tx.send(got);
                let _ = s.write_all(b"done").await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, rx)
}

/// Sends `payload`, half-closes, and returns everything the other side sent until it closed.
async fn exchange(addr: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(payload).await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.unwrap().unwrap();
    out
}

/// A PROXY v2 header for TCP over IPv4, written out by hand (independent of lb's encoder).
fn ppv2_tcp4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\x00\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0x00, 0x0c]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h
}

fn ip4(a: SocketAddr) -> [u8; 4] {
    match a.ip() {
        std::net::IpAddr::V4(v4) => v4.octets(),
        other => panic!("not IPv4: {other}"),
    }
}

fn http_listener(extra: &str) -> String {
    format!("[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n{extra}\n\n")
}

fn tcp_listener(extra: &str) -> String {
    format!("[[listeners]]\nname = \"l4\"\nbind = \"127.0.0.1:0\"\nmode = \"tcp\"\npool = \"p\"\n{extra}\n\n")
}

// ---- TLS to backends ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_backend_with_a_configured_ca_and_sni_and_reused_connections() {
    let dir = temp_dir("https");
    let ca = make_ca("lb test CA");
    let ca_path = write_ca(&dir, "ca.pem", &ca);
    let backend = TlsBackend::start("secure", make_leaf(&ca, &["backend.test"]), false).await;
    let toml = format!(
        "{}[pools.p]\nstrategy = \"round_robin\"\ntls = true\ntls_ca = \"{}\"\ntls_sni = \"backend.test\"\n\
         backends = [{{ addr = \"{}\" }}]\n",
        http_listener(""),
        ca_path.display(),
        backend.addr
    );
    let lb = start_lb(&toml).await;
    let addr = lb.listener_addr("web").unwrap();
    let mut conn = OneConn::open(addr).await;
    for _ in 0..3 {
        let (status, body, _) = conn.get("/hello").await;
        assert_eq!((status.as_u16(), body.as_str()), (200, "secure"));
    }
    assert_eq!(backend.sni.lock().unwrap().clone(), vec![Some("backend.test".to_string())], "one handshake, with SNI");
    assert_eq!(backend.requests.load(Ordering::SeqCst), 3);
    assert_eq!(backend.forwarded_for.lock().unwrap()[0], "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_held_inside_tls_after_an_answer_keep_its_connection_out_of_the_pool() {
    let ca = make_ca("lb test CA");
    let ca_path = write_ca(&temp_dir("trailing"), "ca.pem", &ca);
    let backend = trailing_record_backend(make_leaf(&ca, &["backend.test"])).await;
    let toml = format!(
        "{}[pools.p]\nstrategy = \"round_robin\"\ntls = true\ntls_ca = \"{}\"\ntls_sni = \"backend.test\"\n\
         backends = [{{ addr = \"{backend}\" }}]\n",
        http_listener(""),
        ca_path.display(),
    );
    let lb = start_lb(&toml).await;
    let mut conn = OneConn::open(lb.listener_addr("web").unwrap()).await;
    // Read buffers come in powers of two: one of these sizes is lb's.
    for size in [4096, 8192, 16384, 32768] {
        let (status, body, _) = conn.get(&format!("/size/{size}")).await;
        assert_eq!(status, 200);
        assert!(body.len() < size && body.bytes().all(|b| b == b'x'), "size {size}");
        let (status, body, _) = conn.get("/next").await;
        assert_eq!((status.as_u16(), body.as_str()), (200, "fresh"), "after /size/{size}: an answer nobody asked for");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_backends_are_checked_against_ip_names_without_sni_and_tls_false_overrides_the_pool() {
    let dir = temp_dir("ipname");
    let ca = make_ca("lb test CA");
    let ca_path = write_ca(&dir, "ca.pem", &ca);
    let secure = TlsBackend::start("secure", make_leaf(&ca, &["127.0.0.1"]), false).await;
    let plain = TestBackend::start("plain").await;
    let toml = format!(
        "{}[pools.p]\nstrategy = \"round_robin\"\ntls = true\ntls_ca = \"{}\"\n\
         backends = [{{ addr = \"{}\" }}, {{ addr = \"{}\", tls = false }}]\n",
        http_listener(""),
        ca_path.display(),
        secure.addr,
        plain.addr
    );
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
    let toml = format!(
        "{}[pools.p]\nstrategy = \"round_robin\"\ntls = true\ntls_ca = \"{}\"\ntls_sni = \"backend.test\"\n\
         backends = [{{ addr = \"{}\", name = \"impostor\" }}]\n",
        http_listener(""),
        ca_path.display(),
        backend.addr
    );
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
    let toml = format!(
        "{}[pools.p]\nstrategy = \"round_robin\"\ntls = true\ntls_ca = \"{}\"\ntls_sni = \"echo.test\"\n\
         backends = [{{ addr = \"{}\" }}]\n",
        tcp_listener(""),
        ca_path.display(),
        backend.addr
    );
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
    let toml = format!(
        "{}[pools.p]\nstrategy = \"round_robin\"\ntls = true\ntls_ca = \"{}\"\ntls_sni = \"backend.test\"\n\
         backends = [{{ addr = \"{}\", name = \"good\" }}, {{ addr = \"{}\", name = \"bad\" }}]\n\
         [pools.p.health]\nkind = \"http\"\npath = \"/health\"\ninterval = \"100ms\"\ntimeout = \"1s\"\nrise = 1\nfall = 1\n",
        http_listener(""),
        ca_path.display(),
        good.addr,
        bad.addr
    );
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
    let mut conn = OneConn::open(addr).await;
    assert_eq!(conn.get("/").await.1, "plain");
    assert_eq!(conn.get("/").await.1, "plain", "the idle connection is reused");

    let changes = lb
        .apply(config(&format!("tls = true\ntls_ca = \"{}\"\ntls_sni = \"backend.test\"", ca_path.display())))
        .unwrap();
    assert!(changes.items.iter().any(|c| c.contains("TLS")), "{changes:?}");
    assert_eq!(conn.get("/").await.1, "tls", "not the pooled plain connection");
    assert_eq!(conn.get("/").await.1, "tls");
    assert_eq!(handshakes.load(Ordering::SeqCst), 1, "the TLS connection is pooled in turn");

    lb.apply(config("")).unwrap();
    assert_eq!(conn.get("/").await.1, "plain", "and back");
}

// ---- PROXY protocol towards backends ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_proxy_v2_writes_the_exact_header_then_the_payload() {
    let (backend, mut seen) = recording_backend().await;
    let toml = format!(
        "{}[pools.p]\nstrategy = \"round_robin\"\nsend_proxy = \"v2\"\nbackends = [{{ addr = \"{backend}\" }}]\n",
        tcp_listener("")
    );
    let lb = start_lb(&toml).await;
    let listener = lb.listener_addr("l4").unwrap();
    let mut s = TcpStream::connect(listener).await.unwrap();
    let me = s.local_addr().unwrap();
    s.write_all(b"hello backend").await.unwrap();
    s.shutdown().await.unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer, b"done");
    let mut expected = ppv2_tcp4(ip4(me), me.port(), ip4(listener), listener.port());
    expected.extend_from_slice(b"hello backend");
    assert_eq!(seen.recv().await.unwrap(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_proxy_v1_writes_the_text_line() {
    let (backend, mut seen) = recording_backend().await;
    let toml = format!(
        "{}[pools.p]\nstrategy = \"round_robin\"\nsend_proxy = \"v1\"\nbackends = [{{ addr = \"{backend}\" }}]\n",
        tcp_listener("")
    );
    let lb = start_lb(&toml).await;
    let listener = lb.listener_addr("l4").unwrap();
    let mut s = TcpStream::connect(listener).await.unwrap();
    let me = s.local_addr().unwrap();
    s.write_all(b"payload").await.unwrap();
    s.shutdown().await.unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.unwrap();
    let expected = format!("PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\npayload", me.port(), listener.port());
    assert_eq!(String::from_utf8(seen.recv().await.unwrap()).unwrap(), expected);
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
    let checked = || pool.load().backends[0].health().last_check().0 == lb::health::CheckResult::Success;
    assert!(eventually(Duration::from_secs(5), checked).await, "{:?}", pool.load().backends[0].health().last_check());
    assert_eq!(up_names(&lb, "p"), ["pp"]);
}

// ---- PROXY protocol from a fronting proxy ----

fn request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n").into_bytes()
}

/// Writes `header` then a GET on a fresh connection; returns the whole answer.
async fn get_with_header(addr: SocketAddr, header: &[u8]) -> String {
    let mut bytes = header.to_vec();
    bytes.extend_from_slice(&request("/pp"));
    raw(addr, &bytes, Duration::from_secs(5)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_proxy_v2_and_v1_addresses_become_x_forwarded_for() {
    let backend = TestBackend::start("app").await;
    let toml = format!(
        "{}[pools.p]\nstrategy = \"round_robin\"\n{}\n",
        http_listener("accept_proxy = true"),
        backends_toml(&[&backend])
    );
    let lb = start_lb(&toml).await;
    let addr = lb.listener_addr("web").unwrap();

    let answer = get_with_header(addr, &ppv2_tcp4([203, 0, 113, 7], 4242, [192, 0, 2, 1], 443)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(backend.last_seen().headers["x-forwarded-for"], "203.0.113.7");

    let answer = get_with_header(addr, b"PROXY TCP4 198.51.100.9 192.0.2.1 5555 80\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(backend.last_seen().headers["x-forwarded-for"], "198.51.100.9");

    let answer = get_with_header(addr, b"PROXY TCP6 2001:db8::42 2001:db8::1 5555 80\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(backend.last_seen().headers["x-forwarded-for"], "2001:db8::42");

    // LOCAL (a health check of the fronting proxy) and UNKNOWN keep the socket's address.
    let answer = get_with_header(addr, b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(backend.last_seen().headers["x-forwarded-for"], "127.0.0.1");
    let answer = get_with_header(addr, b"PROXY UNKNOWN\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(backend.last_seen().headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(backend.hits(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_proxy_addresses_are_relayed_to_a_send_proxy_backend() {
    let (backend, mut seen) = recording_backend().await;
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
    let backend = TestBackend::start("app").await;
    let toml = format!(
        "{}[pools.p]\nstrategy = \"round_robin\"\n{}\n",
        http_listener("accept_proxy = true\nheader_timeout = \"300ms\""),
        backends_toml(&[&backend])
    );
    let lb = start_lb(&toml).await;
    let addr = lb.listener_addr("web").unwrap();
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
    let backend = TestBackend::start("app").await;
    let toml = format!(
        "{}[pools.p]\nstrategy = \"round_robin\"\n{}\n",
        http_listener("accept_proxy = true"),
        backends_toml(&[&backend])
    );
    let lb = start_lb(&toml).await;
    let addr = lb.listener_addr("web").unwrap();
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
    let backend = TestBackend::start("app").await;
    let extra =
        format!("accept_proxy = true\ntls = [{{ cert = \"{d}/lb.pem\", key = \"{d}/lb.key\" }}]", d = dir.display());
    let toml =
        format!("{}[pools.p]\nstrategy = \"round_robin\"\n{}\n", http_listener(&extra), backends_toml(&[&backend]));
    let lb = start_lb(&toml).await;

    let mut tcp = TcpStream::connect(lb.listener_addr("web").unwrap()).await.unwrap();
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

// ---- --check ----

fn check(toml: &str) -> Result<lb::config::Loaded, lb::config::ConfigError> {
    lb::config::parse(Path::new("/nonexistent-dir/lb.toml"), toml)
}

/// The line of the first occurrence of `needle` in `toml` (1-based).
fn line_of(toml: &str, needle: &str) -> usize {
    toml.lines().position(|l| l.contains(needle)).unwrap() + 1
}

#[test]
fn check_reports_tls_and_proxy_mistakes_with_their_location() {
    let dir = temp_dir("check");
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "hello\n").unwrap();
    let broken = dir.join("broken.pem");
    std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n").unwrap();
    let pool = |keys: &str, backend: &str| {
        format!(
            "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\n[pools.p]\nstrategy = \"random\"\n{keys}\n\
             backends = [{{ addr = \"127.0.0.1:9443\"{backend} }}]\n"
        )
    };
    let cases = [
        (
            pool(&format!("tls = true\ntls_ca = \"{}\"", dir.join("missing.pem").display()), ""),
            "tls_ca",
            "cannot read TLS CA file",
        ),
        (pool(&format!("tls = true\ntls_ca = \"{}\"", garbage.display()), ""), "tls_ca", "no certificate found"),
        (pool(&format!("tls = true\ntls_ca = \"{}\"", broken.display()), ""), "tls_ca", "cannot read CA certificates"),
        (pool("tls = true\ntls_sni = \"not a name!\"", ""), "tls_sni", "invalid tls_sni"),
        (pool("tls_sni = \"backend.test\"", ""), "tls_sni", "only applies when"),
        (
            pool(&format!("tls = true\ntls_ca = \"{}\"", garbage.display()), ", tls = false"),
            "tls_ca",
            "only applies when",
        ),
        (pool("send_proxy = \"v3\"", ""), "send_proxy", "unknown variant"),
        (pool("", ", tls = \"yes\""), "backends", "invalid type"),
        (pool("tls_verify = false", ""), "tls_verify", "unknown field"),
    ];
    for (toml, key, message) in cases {
        let err = check(&toml).expect_err(&toml);
        assert!(err.message.contains(message), "{toml}\n→ {err}");
        assert_eq!(err.location.map(|l| l.0), Some(line_of(&toml, key)), "{toml}\n→ {err}");
    }
    let listener = "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\naccept_proxy = \"yes\"\n\n\
                    [pools.p]\nstrategy = \"random\"\nbackends = [{ addr = \"127.0.0.1:1\" }]\n";
    let err = check(listener).unwrap_err();
    assert_eq!(err.location.map(|l| l.0), Some(5), "{err}");
}

#[test]
fn check_accepts_the_documented_keys_and_warns_about_send_proxy_on_http() {
    let dir = temp_dir("checkok");
    let ca_path = write_ca(&dir, "ca.pem", &make_ca("ok"));
    let toml = format!(
        "[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\naccept_proxy = true\n\n\
         [pools.p]\nstrategy = \"random\"\ntls = true\ntls_ca = \"{}\"\ntls_sni = \"backend.test\"\nsend_proxy = \"v1\"\n\
         backends = [{{ addr = \"127.0.0.1:9443\" }}, {{ addr = \"127.0.0.1:9080\", tls = false }}]\n",
        ca_path.display()
    );
    let loaded = check(&toml).unwrap();
    assert!(loaded.config.listeners[0].accept_proxy);
    let p = &loaded.config.pools["p"];
    assert_eq!(p.send_proxy, Some(lb::config::ProxyVersion::V1));
    assert_eq!(p.backends[0].tls, Some(ServerName::try_from("backend.test").unwrap()));
    assert_eq!(p.backends[1].tls, None);
    assert_eq!(p.tls.as_ref().and_then(|t| t.ca.clone()), Some(ca_path));
    assert!(loaded.warnings.iter().any(|w| w.contains("send_proxy")), "{:?}", loaded.warnings);
}
