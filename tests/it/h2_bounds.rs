//! HTTP/2 clients held to the listener's bounds (README, "Limits" and "HTTP/2 abuse"): a stream
//! whose client grants no flow-control window is reset after `idle_timeout`, releasing its
//! backend connection and in-flight count; `max_headers` holds for HTTP/2 requests as for
//! HTTP/1 heads; PING and SETTINGS floods end their connection.
//!
//! Real clients over h2c (prior knowledge) on 127.0.0.1: the h2 crate's client for the one that
//! advertises a zero window (it answers lb's PINGs by itself, as the misbehaving clients did),
//! hyper's for well-formed requests, raw frames for the floods. Every wait has a generous hang
//! guard ([`PATIENCE`]); no test asserts how fast something happened.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

fn config(backends: &str, listener_extra: &str) -> String {
    format!(
        "[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n{listener_extra}\n\n\
         [pools.app]\nstrategy = \"round_robin\"\n{backends}\n"
    )
}

/// A raw HTTP/1.1 backend that answers every request with a chunked body's first chunk and
/// never ends it, then waits for lb to close the connection. Counts connections accepted and
/// connections lb closed (EOF or reset seen by the backend).
async fn endless_backend() -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (accepted, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (a, c) = (accepted.clone(), closed.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            let c = c.clone();
            tokio::spawn(async move {
                if read_head(&mut s).await.is_none() {
                    return;
                }
                let head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\nfirst;\r\n";
                if s.write_all(head).await.is_err() {
                    return;
                }
                // Nothing more is sent; only lb closing the connection ends this.
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                c.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, accepted, closed)
}

#[tokio::test]
async fn a_stream_the_client_grants_no_window_is_reset_after_idle_timeout() {
    const STREAMS: usize = 4;
    let (backend, accepted, closed) = endless_backend().await;
    let lb = start_lb(&config(&format!("backends = [{{ addr = \"{backend}\" }}]"), "idle_timeout = \"1s\"")).await;
    let addr = lb.listener_addr("web").unwrap();
    let pool = lb.pool("app").unwrap();

    // A client that grants no stream window: response heads arrive (HEADERS are not flow
    // controlled), no DATA can. Its connection task answers lb's keep-alive PINGs.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut client, conn) =
        h2::client::Builder::new().initial_window_size(0).handshake::<_, Bytes>(tcp).await.unwrap();
    let driver = tokio::spawn(conn);
    let mut bodies = Vec::new();
    for i in 0..STREAMS {
        client = client.ready().await.unwrap();
        let req = http::Request::get(format!("http://h/stall/{i}")).body(()).unwrap();
        let (resp, _) = client.send_request(req, true).unwrap();
        let resp = tokio::time::timeout(PATIENCE, resp).await.expect("no response head").unwrap();
        assert_eq!(resp.status(), 200);
        bodies.push(resp.into_body());
    }
    // Every stream holds a backend connection and counts in flight while its body waits.
    assert_eq!(pool.load_full().backends[0].in_flight(), STREAMS);
    assert_eq!(accepted.load(Ordering::SeqCst), STREAMS);

    for mut body in bodies {
        let end = tokio::time::timeout(PATIENCE, body.data()).await.expect("stalled stream never reset");
        let err = match end {
            Some(Err(e)) => e,
            other => panic!("expected a reset stream, got {other:?}"),
        };
        assert!(err.is_reset() && err.is_remote(), "{err:?}");
        assert_eq!(err.reason(), Some(h2::Reason::CANCEL), "{err:?}");
    }
    // Released at lb: nothing in flight, and every backend connection closed (not kept for
    // reuse: its response never ended).
    let p = pool.load_full();
    assert!(eventually(PATIENCE, || p.backends[0].in_flight() == 0).await, "in flight: {}", p.backends[0].in_flight());
    assert!(
        eventually(PATIENCE, || closed.load(Ordering::SeqCst) == STREAMS).await,
        "backend connections closed: {} of {STREAMS}",
        closed.load(Ordering::SeqCst)
    );
    // Only the streams were reset: the connection itself was still up when they were.
    assert!(!driver.is_finished());
}

/// Sends `GET path` over h2c with `n` extra headers named by `name(i)`; returns the status and
/// body.
async fn h2_get_with_headers(addr: SocketAddr, path: &str, n: usize, name: fn(usize) -> String) -> (u16, String) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::get(format!("http://h{path}"));
    for i in 0..n {
        req = req.header(name(i), format!("v{i}"));
    }
    let resp = send.send_request(req.body(Empty::<Bytes>::new()).unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A raw HTTP/1.1 backend (no header limit of its own) that answers `ok` to every bodiless
/// request on a keep-alive connection and records each request head it received.
async fn recording_backend() -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 16 * 1024];
                loop {
                    while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head: Vec<u8> = got.drain(..end + 4).collect();
                        seen.lock().unwrap().push(String::from_utf8_lossy(&head).into_owned());
                        if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
            });
        }
    });
    (addr, heads)
}

#[tokio::test]
async fn max_headers_holds_for_http2_requests() {
    let (backend, heads) = recording_backend().await;
    let lb = start_lb(&config(&format!("backends = [{{ addr = \"{backend}\" }}]"), "max_headers = 100")).await;
    let addr = lb.listener_addr("web").unwrap();
    let numbered = |i: usize| format!("x-h-{i}");

    let (status, body) = h2_get_with_headers(addr, "/many", 150, numbered).await;
    assert_eq!((status, body.as_str()), (431, "431 Request Header Fields Too Large\n"));
    assert!(heads.lock().unwrap().is_empty(), "a refused request reached the backend");

    let (status, body) = h2_get_with_headers(addr, "/some", 50, numbered).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    {
        let heads = heads.lock().unwrap();
        assert_eq!(heads.len(), 1);
        assert!(heads[0].starts_with("GET /some HTTP/1.1\r\n") && heads[0].contains("x-h-49: v49\r\n"), "{}", heads[0]);
    }

    // HTTP/2 clients send one `cookie` field per cookie, where HTTP/1 has one line: 150 cookies
    // count as one header, as they would over HTTP/1.
    let (status, _) = h2_get_with_headers(addr, "/cookies", 150, |_| "cookie".to_owned()).await;
    assert_eq!(status, 200);
    assert_eq!(heads.lock().unwrap().len(), 2);
}

// ---- control-frame floods ----

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK for `GET http://h/stream`: static-table :method GET and :scheme http, :path and
/// :authority as literals without indexing. The test backend's `/stream` answers its first
/// chunk and holds the response open.
const GET_STREAM: &[u8] = &[0x82, 0x86, 0x04, 0x07, b'/', b's', b't', b'r', b'e', b'a', b'm', 0x01, 0x01, b'h'];

/// Opens an h2c connection, starts a request whose response stays open (so that only the
/// flood bound can end the connection: it is neither idle nor without requests), then writes
/// `count` copies of `one` (a frame) while reading everything lb answers. Returns whether lb
/// closed the connection, and how many bytes it had answered by then.
async fn flood(addr: SocketAddr, one: Vec<u8>, count: usize) -> (bool, usize) {
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        wr.write_all(PREFACE).await?;
        wr.write_all(&frame(0x4, 0, 0, &[])).await?;
        wr.write_all(&frame(0x1, 0x5, 1, GET_STREAM)).await?; // END_STREAM | END_HEADERS
        let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 1024).collect();
        for _ in 0..count / 1024 {
            wr.write_all(&batch).await?;
        }
        Ok::<_, std::io::Error>(wr)
    });
    let mut answered = 0;
    let mut buf = vec![0u8; 64 * 1024];
    let closed = loop {
        match tokio::time::timeout(PATIENCE, rd.read(&mut buf)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => answered += n,
        }
    };
    // Keeps the socket open until lb has closed it (or the hang guard ran out).
    drop(writer.await);
    (closed, answered)
}

#[tokio::test]
async fn ping_and_settings_floods_are_cut_off() {
    let b = TestBackend::start("a").await;
    let lb = start_lb(&config(&backends_toml(&[&b]), "")).await;
    let addr = lb.listener_addr("web").unwrap();
    // 10 MiB of PINGs (17 bytes each), every one answered by a PONG the client reads.
    let ping = frame(0x6, 0, 0, b"12345678");
    let (closed, answered) = flood(addr, ping, 10 << 20 >> 4).await;
    assert!(closed, "a PING flood was answered for ever ({answered} bytes)");
    // 16 MiB of SETTINGS frames full of settings nobody knows (which must be ignored), each
    // answered by an ACK.
    let unknown: Vec<u8> = std::iter::repeat_n([0xff, 0x00, 0, 0, 0, 1], 2730).flatten().collect();
    let (closed, answered) = flood(addr, frame(0x4, 0, 0, &unknown), 1024).await;
    assert!(closed, "a SETTINGS flood was answered for ever ({answered} bytes)");
    // Requests are served as before.
    let (status, body, _) = get(&client(), addr, "/after").await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "a"));
}
