//! [`TestBackend`]: an HTTP/1.1 backend on 127.0.0.1:0 that answers with its name, records
//! every request that reaches it, and can be made slow, sick, streaming or dead on demand.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What a backend saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A backend server. Answers with its name as the body and in `x-served-by`; records requests.
///
/// Paths: `/slow/MS` answers after MS milliseconds; `/slowif/NAME/MS` too, but only on the
/// backend called NAME; `/echo` echoes the request body;
/// `/status/CODE` answers CODE; `/health` answers 200 or 503 (see `set_healthy`); `/drop`
/// records the request and closes the connection without answering; `/stream` sends "first" then waits for `release()` before
/// "second"; `/hop` answers with hop-by-hop headers; anything else answers 200 at once.
pub struct TestBackend {
    pub name: String,
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    kill: watch::Sender<bool>,
    release: Arc<tokio::sync::Notify>,
    healthy: Arc<std::sync::atomic::AtomicBool>,
}

impl TestBackend {
    pub async fn start(name: &str) -> TestBackend {
        Self::start_on(name, "127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(name: &str, addr: SocketAddr) -> TestBackend {
        let listener = TcpListener::bind(addr).await.expect("bind test backend");
        let addr = listener.local_addr().unwrap();
        let (kill, kill_rx) = watch::channel(false);
        let b = TestBackend {
            name: name.to_owned(),
            addr,
            hits: Arc::default(),
            seen: Arc::default(),
            kill,
            release: Arc::default(),
            healthy: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        };
        let (name, hits, seen, release) = (b.name.clone(), b.hits.clone(), b.seen.clone(), b.release.clone());
        let healthy = b.healthy.clone();
        tokio::spawn(async move {
            let mut stop = kill_rx.clone();
            loop {
                let (stream, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(p) => p, Err(_) => continue },
                    _ = stop.wait_for(|k| *k) => return,
                };
                let (name, hits, seen, release) = (name.clone(), hits.clone(), seen.clone(), release.clone());
                let healthy = healthy.clone();
                let mut stop = kill_rx.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let ok = healthy.load(Ordering::SeqCst);
                        handle(req, name.clone(), hits.clone(), seen.clone(), release.clone(), ok)
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades();
                    tokio::select! {
                        _ = conn => {}
                        // Dropping the connection closes the socket, like a killed process.
                        _ = stop.wait_for(|k| *k) => {}
                    }
                });
            }
        });
        b
    }

    /// Closes the listening socket and every open connection at once, like SIGKILL would.
    pub fn kill(&self) {
        self.kill.send_replace(true);
    }

    /// Lets every `/stream` response send its second chunk.
    pub fn release(&self) {
        self.release.notify_waiters();
    }

    /// Makes `/health` answer 200 (true) or 503 (false).
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::SeqCst);
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn last_seen(&self) -> Seen {
        self.seen.lock().unwrap().last().cloned().expect("backend saw no request")
    }
}

type TestBody = BoxBody<Bytes, Infallible>;

/// Returned by the service for `/drop`: hyper closes the connection without an answer.
#[derive(Debug)]
pub struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("dropped on purpose")
    }
}

impl std::error::Error for Dropped {}

fn full(s: impl Into<Bytes>) -> TestBody {
    Full::new(s.into()).boxed()
}

async fn handle(
    mut req: Request<Incoming>,
    name: String,
    hits: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    release: Arc<tokio::sync::Notify>,
    healthy: bool,
) -> Result<Response<TestBody>, Dropped> {
    let path = req.uri().path().to_owned();
    if path == "/ws" {
        return Ok(websocket_echo(&mut req));
    }
    if path == "/health" {
        let mut r = Response::new(full(if healthy { "ok" } else { "sick" }));
        if !healthy {
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        }
        return Ok(r);
    }
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    seen.lock().unwrap().push(Seen { uri: parts.uri.to_string(), headers: parts.headers.clone(), body: body.clone() });
    hits.fetch_add(1, Ordering::SeqCst);
    if path == "/drop" {
        // The request arrived, and the backend dies before answering.
        return Err(Dropped);
    }
    let mut resp = if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        Response::new(full(name.clone()))
    } else if let Some(rest) = path.strip_prefix("/slowif/") {
        // `/slowif/NAME/MS`: only the backend called NAME is slow.
        let (who, ms) = rest.split_once('/').unwrap_or((rest, "0"));
        if who == name {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        }
        Response::new(full(name.clone()))
    } else if let Some(code) = path.strip_prefix("/status/") {
        let mut r = Response::new(full(name.clone()));
        *r.status_mut() = StatusCode::from_u16(code.parse().unwrap_or(500)).unwrap();
        r
    } else if path == "/echo" {
        Response::new(full(body))
    } else if path == "/stream" {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(2);
        let notified = release.clone();
        tokio::spawn(async move {
            let wait = notified.notified();
            let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"first;")))).await;
            wait.await;
            let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"second")))).await;
        });
        Response::new(BodyExt::boxed(StreamBody::new(tokio_stream_from(rx))))
    } else if path == "/hop" {
        let mut r = Response::new(full(name.clone()));
        let h = r.headers_mut();
        h.insert("connection", "x-private".parse().unwrap());
        h.insert("x-private", "secret".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-public", "yes".parse().unwrap());
        r
    } else {
        Response::new(full(name.clone()))
    };
    resp.headers_mut().insert("x-served-by", name.parse().unwrap());
    Ok(resp)
}

/// An mpsc receiver as a body stream, without pulling in tokio-stream.
fn tokio_stream_from<T>(rx: tokio::sync::mpsc::Receiver<T>) -> impl futures_core::Stream<Item = T> {
    struct S<T>(tokio::sync::mpsc::Receiver<T>);
    impl<T> futures_core::Stream for S<T> {
        type Item = T;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<T>> {
            self.0.poll_recv(cx)
        }
    }
    S(rx)
}

/// Answers an Upgrade request with 101 and echoes every byte on the upgraded connection.
fn websocket_echo(req: &mut Request<Incoming>) -> Response<TestBody> {
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        if let Ok(up) = on_upgrade.await {
            let mut io = TokioIo::new(up);
            let (mut r, mut w) = tokio::io::split(&mut io);
            let _ = tokio::io::copy(&mut r, &mut w).await;
        }
    });
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    r.headers_mut().insert("connection", "upgrade".parse().unwrap());
    r.headers_mut().insert("upgrade", "websocket".parse().unwrap());
    r
}
