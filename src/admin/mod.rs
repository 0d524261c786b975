//! The admin listener: `GET /metrics` (Prometheus text format), `GET /healthz` (is the process
//! up and serving), `GET /status` (an HTML status page of listeners, pools and backends) and
//! `GET /status.json` (the same data), on their own address so they can be firewalled apart
//! from clients.
//!
//! HTTP/1.1 only (scrapers and browsers speak it), so hyper's head timer runs from the moment a
//! connection opens: a connection that sends no request within 10 s, or sits idle that long
//! between requests, is closed. At most [`MAX_CONNECTIONS`] are served at once; more wait in
//! the kernel's backlog, so idle admin connections cannot use up the process's descriptors.

pub mod status;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::metrics::Metrics;
use crate::shutdown::Signal;
use status::{Rates, SharedTopology, Status, CSP};

/// What the admin endpoints read.
struct Admin {
    metrics: Arc<Metrics>,
    topology: SharedTopology,
    rates: Arc<Rates>,
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// A live view: never cached, never sniffed as another type.
fn live(body: impl Into<Bytes>, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    r
}

async fn route(req: Request<Incoming>, admin: Arc<Admin>) -> Result<Response<Full<Bytes>>, Infallible> {
    let status = || Status::collect(&admin.metrics, &admin.topology.load(), &admin.rates);
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET | &Method::HEAD, "/metrics") => {
            let mut r = Response::new(Full::new(Bytes::from(admin.metrics.render())));
            r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
            r
        }
        (&Method::GET | &Method::HEAD, "/status") => {
            let mut r = live(status().to_html(), "text/html; charset=utf-8");
            r.headers_mut().insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
            r
        }
        (&Method::GET | &Method::HEAD, "/status.json") => live(status().to_json(), "application/json"),
        (_, "/healthz" | "/metrics" | "/status" | "/status.json") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found; try /status, /status.json, /metrics or /healthz\n"),
    })
}

/// Serves the admin endpoints until `stop` (the admin listener moved or was removed by a
/// reload) or the drain (shutdown) is triggered; connections end gracefully at the drain.
/// `topology` is the listener and health-check view that `app` republishes on reload.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    topology: SharedTopology,
    mut stop: Signal,
    mut signal: Signal,
) {
    let rates = Arc::new(Rates::default());
    tokio::spawn(rates.clone().run(metrics.clone(), stop.clone(), signal.clone()));
    let admin = Arc::new(Admin { metrics, topology, rates });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(std::time::Duration::from_secs(10));
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = signal.triggered() => return,
            _ = stop.triggered() => return,
        };
        let (stream, _peer): (_, SocketAddr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    crate::server::accept_backoff("admin", &e).await;
                    continue;
                }
            },
            _ = signal.triggered() => return,
            _ = stop.triggered() => return,
        };
        let builder = builder.clone();
        let mut sig = signal.clone();
        let admin = admin.clone();
        tokio::spawn(async move {
            let conn = builder.serve_connection(
                TokioIo::new(stream),
                hyper::service::service_fn(move |req| route(req, admin.clone())),
            );
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = sig.triggered() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(permit);
        });
    }
}

/// Admin connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
