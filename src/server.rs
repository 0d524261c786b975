//! Listeners: bind, accept under a connection limit, and serve each connection as HTTP (hyper-util
//! auto: HTTP/1.1 keep-alive or h2c with prior knowledge) or as a TCP session.
//!
//! What can change on reload is reached through `ArcSwap`s: the listener's route (which pool it
//! balances over) is loaded per request, the connection settings per accepted connection.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::config::{ListenerConfig, Mode};
use crate::pool::Route;
use crate::proxy::{tcp, HttpProxy};
use crate::shutdown::Signal;

/// Largest request head (request line + headers) accepted; larger gets 431.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Pending connections the kernel may queue beyond `max_connections`.
const BACKLOG: u32 = 4096;

/// Everything a listener needs to serve a connection.
pub struct ListenerRuntime {
    pub name: Arc<str>,
    pub mode: Mode,
    pub route: Route,
    pub http: Arc<HttpProxy>,
    builder: auto::Builder<TokioExecutor>,
    limit: Arc<Semaphore>,
}

impl ListenerRuntime {
    pub fn new(cfg: &ListenerConfig, route: Route) -> Self {
        let name: Arc<str> = Arc::from(cfg.name.as_str());
        let scheme = if cfg.tls.is_empty() { "http" } else { "https" };
        let http = Arc::new(HttpProxy {
            listener: name.clone(),
            route: route.clone(),
            scheme,
        });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            // hyper starts this timer whenever it waits for a request head, including between
            // keep-alive requests, so it also bounds how long an idle connection is kept.
            .header_read_timeout(cfg.header_timeout.min(cfg.idle_timeout))
            .max_buf_size(MAX_HEAD_BYTES)
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(256)
            .keep_alive_interval(Some(cfg.idle_timeout))
            .keep_alive_timeout(Duration::from_secs(20));
        ListenerRuntime {
            name,
            mode: cfg.mode,
            route,
            http,
            builder,
            limit: Arc::new(Semaphore::new(cfg.max_connections as usize)),
        }
    }
}

/// Binds a listening socket with SO_REUSEADDR and a deep backlog (connections beyond
/// `max_connections` wait there rather than being refused).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Accepts until `stop` (this listener removed) or `drain` (shutdown) is triggered. Each
/// connection runs in its own task holding a permit of the connection limit and a drain signal.
pub async fn accept_loop(
    listener: TcpListener,
    rt: Arc<ArcSwap<ListenerRuntime>>,
    mut stop: Signal,
    mut signal: Signal,
) {
    let mut last_error_log: Option<Instant> = None;
    loop {
        let current = rt.load_full();
        let permit = tokio::select! {
            p = current.limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = signal.triggered() => return,
            _ = stop.triggered() => return,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    accept_backoff(&current.name, &e, &mut last_error_log).await;
                    continue;
                }
            },
            _ = signal.triggered() => return,
            _ = stop.triggered() => return,
        };
        let sig = signal.clone();
        tokio::spawn(async move {
            serve(stream, peer, &current, sig).await;
            drop(permit);
        });
    }
}

/// Accept errors (EMFILE, ENFILE, ENOBUFS, ECONNABORTED...) must not turn into a busy loop:
/// wait a little, and log at most once a second.
async fn accept_backoff(listener: &str, e: &io::Error, last: &mut Option<Instant>) {
    let now = Instant::now();
    if last.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
        tracing::warn!(listener, error = %e, "accept failed; backing off");
        *last = Some(now);
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
}

async fn serve(stream: TcpStream, peer: SocketAddr, rt: &ListenerRuntime, mut signal: Signal) {
    let _ = stream.set_nodelay(true);
    match rt.mode {
        Mode::Tcp => {
            // A TCP session is left to finish on its own when draining; the process-level
            // deadline bounds it.
            let _ = tcp::proxy_connection(stream, peer, &rt.route).await;
        }
        Mode::Http => {
            let proxy = rt.http.clone();
            let svc = hyper::service::service_fn(move |req| proxy.clone().handle(req, peer));
            let conn = rt
                .builder
                .serve_connection_with_upgrades(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                res = conn.as_mut() => {
                    if let Err(e) = res {
                        tracing::debug!(listener = %rt.name, client = %peer, error = %e, "connection ended with error");
                    }
                }
                _ = signal.triggered() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        }
    }
}
