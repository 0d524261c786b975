//! Listeners: bind, accept under a connection limit, and serve each connection as HTTP (hyper-util
//! auto: HTTP/1.1 keep-alive or h2c with prior knowledge) or as a TCP session.
//!
//! What can change on reload is reached through `ArcSwap`s: the listener's route (which pool it
//! balances over) is loaded per request, the connection settings per accepted connection.

pub mod checked_stream;
pub mod deadlines;
pub mod h2_flood;
pub mod h2_stream;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use prometheus::{IntCounter, IntGauge};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;

use crate::access_log::AccessLog;
use crate::config::{ListenerConfig, Mode};
use crate::metrics::Metrics;
use crate::pool::Route;
use crate::proxy::{limits, tcp, HttpProxy};
use crate::proxy_protocol;
use crate::shutdown::Signal;

use crate::http1::MAX_HEAD_BYTES;
use checked_stream::CheckedStream;
use deadlines::{Activity, ConnTimeouts, Expired};
use h2_stream::StreamExec;

/// Unsent bytes an HTTP client's socket may hold before it stops taking more from lb
/// (`TCP_NOTSENT_LOWAT`). Without it the kernel grows the send buffer of a client that reads
/// nothing up to `tcp_wmem`'s maximum (4 MiB; 550 KB per connection measured under
/// `slowhttptest -X`, as for nginx and HAProxy), and lb keeps reading the backend to fill it.
/// With it a slow reader pushes back on lb, and through lb on the backend, after about this
/// much. Twice hyper's write batch (`MAX_HEAD_BYTES`), so that a batch always fits; bytes sent
/// and not yet acknowledged do not count, so it does not limit a fast client's window.
#[cfg(any(target_os = "linux", target_os = "android"))]
const CLIENT_NOTSENT_LOWAT: u32 = 128 * 1024;

/// Pending connections the kernel may queue beyond `max_connections`.
const BACKLOG: u32 = 4096;

/// Everything a listener needs to serve a connection.
pub struct ListenerRuntime {
    pub name: Arc<str>,
    pub mode: Mode,
    pub route: Route,
    pub http: Arc<HttpProxy>,
    /// Runs each HTTP/2 stream as a task of its own under `idle_timeout` (see `h2_stream`).
    builder: auto::Builder<StreamExec>,
    /// `max_connections` permits; shared by every runtime of one listener socket (see
    /// [`ListenerRuntime::inherit_limit`]).
    limit: Arc<Semaphore>,
    max_connections: u32,
    counters: ListenerCounters,
    /// TLS termination, when the listener has certificates.
    tls: Option<TlsAcceptor>,
    /// Where sessions are logged (tcp mode; http requests log through `http`).
    access_log: Option<Arc<AccessLog>>,
    /// A client must finish the TLS handshake within this (`header_timeout`), so that
    /// half-open handshakes cannot pile up.
    handshake_timeout: Duration,
    /// `accept_proxy`: every connection starts with a PROXY protocol header (read within
    /// `handshake_timeout`, before TLS) whose addresses replace the socket's.
    accept_proxy: bool,
    /// Time to the first request, and how long a connection may sit without one.
    timeouts: ConnTimeouts,
    /// Header lines allowed per HTTP/1 request head (more: `431`, answered by lb on the byte
    /// stream; HTTP/2 requests are held to it by `limits::check`).
    max_headers: usize,
}

/// What a listener needs beyond its configuration, prepared by the caller before anything is
/// switched, so that a bad certificate or an unopenable log rejects a reload cleanly.
#[derive(Default)]
pub struct ListenerExtras {
    /// See [`crate::tls::server_config`].
    pub tls: Option<Arc<ServerConfig>>,
    pub access_log: Option<Arc<AccessLog>>,
}

/// This listener's metric children, resolved once so the accept path does no label lookup.
struct ListenerCounters {
    open: IntGauge,
    total: IntCounter,
    /// Bytes from and to clients; tcp listeners only.
    tcp: Option<tcp::ByteCounters>,
}

/// Counts a connection as open while it lives.
struct OpenConnection(IntGauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl ListenerRuntime {
    /// `tls` is the listener's server config (see [`crate::tls::server_config`]), built by the
    /// caller so that a bad certificate can reject a reload before anything is switched.
    pub fn new(cfg: &ListenerConfig, route: Route, metrics: &Arc<Metrics>, extras: ListenerExtras) -> Self {
        let ListenerExtras { tls, access_log } = extras;
        let name: Arc<str> = Arc::from(cfg.name.as_str());
        let scheme = if tls.is_some() { "https" } else { "http" };
        let http = Arc::new(HttpProxy {
            listener: name.clone(),
            route: route.clone(),
            scheme,
            metrics: metrics.clone(),
            access_log: access_log.clone(),
            limits: limits::Limits {
                max_uri_bytes: cfg.max_uri_bytes,
                max_body_bytes: cfg.max_body_bytes,
                max_headers: cfg.max_headers,
            },
            tunnel_idle: cfg.idle_timeout,
        });
        let counters = ListenerCounters {
            open: metrics.connections_open.with_label_values(&[&cfg.name]),
            total: metrics.connections_total.with_label_values(&[&cfg.name]),
            tcp: (cfg.mode == Mode::Tcp).then(|| {
                (
                    metrics.tcp_bytes.with_label_values(&[cfg.name.as_str(), "in"]),
                    metrics.tcp_bytes.with_label_values(&[cfg.name.as_str(), "out"]),
                )
            }),
        };
        let mut builder = auto::Builder::new(StreamExec::new(name.clone(), cfg.idle_timeout));
        builder
            .http1()
            .timer(TokioTimer::new())
            // Off: hyper's head timer also runs between keep-alive requests (so it would cut
            // idle connections at header_timeout) and costs a timer per request. Heads are
            // timed by the connection's stream instead, only when one arrives in pieces (see
            // `CheckedStream` and `Activity::expired`).
            .header_read_timeout(None)
            .max_buf_size(MAX_HEAD_BYTES)
            .max_headers(cfg.max_headers)
            .keep_alive(true);
        // HTTP/2 abuse bounds, spelled out rather than inherited from hyper/h2 defaults:
        // - rapid reset: at most 20 streams opened and reset by the client before we accepted
        //   them; past that the connection gets GOAWAY(ENHANCE_YOUR_CALM);
        // - streams we reset for protocol errors: at most 1024 per connection, then GOAWAY;
        // - header list up to the same 64 KiB as an HTTP/1 head (431 beyond), which also caps
        //   CONTINUATION frames per header block (h2 allows about list size / frame size + 25%
        //   of them, at least 5) so a CONTINUATION flood ends in GOAWAY.
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(256)
            .max_pending_accept_reset_streams(20)
            .max_local_error_reset_streams(1024)
            .max_header_list_size(MAX_HEAD_BYTES as u32)
            .keep_alive_interval(Some(cfg.idle_timeout))
            .keep_alive_timeout(Duration::from_secs(20));
        ListenerRuntime {
            name,
            mode: cfg.mode,
            route,
            http,
            builder,
            limit: Arc::new(Semaphore::new(cfg.max_connections as usize)),
            max_connections: cfg.max_connections,
            counters,
            tls: tls.map(TlsAcceptor::from),
            access_log,
            handshake_timeout: cfg.header_timeout,
            accept_proxy: cfg.accept_proxy,
            timeouts: ConnTimeouts {
                first_request: cfg.header_timeout,
                idle: cfg.idle_timeout,
                head: cfg.header_timeout,
            },
            max_headers: cfg.max_headers,
        }
    }
}

impl ListenerRuntime {
    /// Takes over the connection limit of `prev`, the runtime this one replaces on the same
    /// socket (a reload). Open connections hold permits of `prev`'s semaphore: a fresh one would
    /// let the listener exceed `max_connections` by everything still open. The shared semaphore
    /// is resized to this runtime's `max_connections`; a shrink below what is in use takes
    /// effect as connections close.
    pub fn inherit_limit(&mut self, prev: &ListenerRuntime) {
        self.limit = prev.limit.clone();
        let (old, new) = (prev.max_connections as usize, self.max_connections as usize);
        if new > old {
            self.limit.add_permits(new - old);
        } else if new < old {
            let short = (old - new) - self.limit.forget_permits(old - new);
            if short > 0 {
                // The semaphore is fair: this waits ahead of the accept loop for permits.
                let limit = self.limit.clone();
                tokio::spawn(async move {
                    if let Ok(p) = limit.acquire_many_owned(short as u32).await {
                        p.forget();
                    }
                });
            }
        }
    }
}

/// Binds a listening socket with SO_REUSEADDR and a deep backlog (connections beyond
/// `max_connections` wait there rather than being refused).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// [`bind`], as a socket not yet tied to any runtime: each worker registers its own copy of it
/// (see [`accept_loop`]).
pub fn bind_std(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    bind(addr)?.into_std()
}

/// Accepts until `stop` (this listener removed) or `drain` (shutdown) is triggered, on the
/// worker it runs on. Every worker runs one per listener on a duplicate of the same socket
/// (each in its own epoll; whichever worker is free first takes a new connection). Each
/// connection runs in its own task on this worker, holding a permit of the connection limit
/// and a drain signal. The socket is shared so that a reload can hand it to another listener
/// (renamed, or addresses swapped); it closes when the last holder drops it.
pub async fn accept_loop(
    socket: Arc<std::net::TcpListener>,
    rt: Arc<ArcSwap<ListenerRuntime>>,
    share: WorkerShare,
    mut stop: Signal,
    mut signal: Signal,
) {
    // A duplicate descriptor registered with this worker's reactor. Under descriptor
    // exhaustion the duplicate may fail; back off and try again like a failed accept.
    let listener = loop {
        match socket.try_clone().and_then(TcpListener::from_std) {
            Ok(l) => break l,
            Err(e) => {
                let name = rt.load().name.clone();
                tokio::select! {
                    _ = accept_backoff(&name, &e) => continue,
                    _ = signal.triggered() => return,
                    _ = stop.triggered() => return,
                }
            }
        }
    };
    drop(socket);
    loop {
        // Leave the next connection to a less loaded worker, if there is one.
        tokio::select! {
            _ = share.load.wait_turn(share.index) => {}
            _ = signal.triggered() => return,
            _ = stop.triggered() => return,
        }
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
                    accept_backoff(&current.name, &e).await;
                    continue;
                }
            },
            _ = signal.triggered() => return,
            _ = stop.triggered() => return,
        };
        // Load again: a reload may have happened while we waited in accept(), and the new
        // connection must get the new settings (certificates, timeouts).
        let current = rt.load_full();
        let sig = signal.clone();
        let on_worker = share.load.opened(share.index);
        tokio::spawn(async move {
            serve(stream, peer, &current, sig).await;
            drop((permit, on_worker));
        });
    }
}

/// Which worker an accept loop runs on, and every worker's connection count (see
/// [`crate::workers::Load`]).
pub struct WorkerShare {
    pub index: usize,
    pub load: Arc<crate::workers::Load>,
}

/// Accept errors (EMFILE, ENFILE, ENOBUFS, ECONNABORTED...) must not turn into a busy loop:
/// wait a little, and log at most once a second. The limit is per process, not per accept
/// loop: every worker runs one per listener, and descriptor exhaustion hits them all at once.
pub(crate) async fn accept_backoff(listener: &str, e: &io::Error) {
    static LAST_LOG: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);
    let now = Instant::now();
    let log = {
        let mut last = LAST_LOG.lock().unwrap_or_else(|p| p.into_inner());
        let due = last.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1));
        if due {
            *last = Some(now);
        }
        due
    };
    if log {
        tracing::warn!(listener, error = %e, "accept failed; backing off");
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
}

async fn serve(mut stream: TcpStream, peer: SocketAddr, rt: &ListenerRuntime, mut signal: Signal) {
    let _ = stream.set_nodelay(true);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if rt.mode == Mode::Http {
        // Best effort: without it a slow reader only costs more memory.
        let _ = socket2::SockRef::from(&stream).set_tcp_notsent_lowat(CLIENT_NOTSENT_LOWAT);
    }
    rt.counters.total.inc();
    rt.counters.open.inc();
    let _open = OpenConnection(rt.counters.open.clone());
    // The address the client connected to (a tcp pool with send_proxy passes it on).
    let local = stream.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    // On an accept_proxy listener the PROXY header's addresses stand for the client from here
    // on (X-Forwarded-For, consistent_hash, logs); without a valid header nothing is served.
    let (peer, local) = if rt.accept_proxy {
        // Shutdown does not wait for a header that has not come (boxed: most listeners never
        // take this path, and every connection's task is allocated at its future's size).
        let header = Box::pin(async {
            tokio::select! {
                r = proxy_protocol::accept(&mut stream, peer, local, rt.handshake_timeout) => Some(r),
                _ = signal.triggered() => None,
            }
        });
        match header.await {
            Some(Ok(addresses)) => addresses,
            Some(Err(e)) => {
                tracing::debug!(listener = %rt.name, client = %peer, error = %e, "PROXY header refused; closing");
                return;
            }
            None => return,
        }
    } else {
        (peer, local)
    };
    match &rt.tls {
        None => serve_stream(stream, peer, local, rt, signal).await,
        // Boxed: the TLS handshake and stream make this future more than twice as large, and
        // every connection's task is allocated at that size (measured: 10 KB per plain
        // connection's task before, 4.2 KB after).
        Some(acceptor) => Box::pin(serve_tls(acceptor, stream, peer, local, rt, signal)).await,
    }
}

/// The TLS handshake (within `handshake_timeout`), then the connection as usual.
async fn serve_tls(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    rt: &ListenerRuntime,
    mut signal: Signal,
) {
    // Shutdown does not wait for a handshake that has not finished.
    let handshake = tokio::select! {
        r = tokio::time::timeout(rt.handshake_timeout, acceptor.accept(stream)) => r,
        _ = signal.triggered() => return,
    };
    match handshake {
        Ok(Ok(tls)) => serve_stream(tls, peer, local, rt, signal).await,
        Ok(Err(e)) => tracing::debug!(listener = %rt.name, client = %peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(listener = %rt.name, client = %peer, "TLS handshake timed out"),
    }
}

/// Serves one (plain or TLS) client connection in the listener's mode; `local` is the address
/// the client connected to.
async fn serve_stream<S>(stream: S, peer: SocketAddr, local: SocketAddr, rt: &ListenerRuntime, mut signal: Signal)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match rt.mode {
        Mode::Tcp => {
            // A TCP session is left to finish on its own when draining; the process-level
            // deadline bounds it.
            let started = std::time::Instant::now();
            let (route, metrics, bytes) = (&rt.route, &rt.http.metrics, rt.counters.tcp.as_ref());
            let session = tcp::proxy_connection(stream, peer, local, route, metrics, bytes, rt.timeouts.idle).await;
            if let Some(log) = &rt.access_log {
                let (backend, bytes_in, bytes_out, retries) = match &session {
                    Some(s) => (Some(s.backend.name.as_str()), s.from_client, s.to_client, s.retries),
                    None => (None, 0, 0, 0),
                };
                log.tcp(&rt.name, peer, backend, bytes_in, bytes_out, started, retries);
            }
        }
        Mode::Http => {
            let proxy = rt.http.clone();
            // Bounds the wait for the first request (hyper's header timer starts only once
            // the protocol is known) and HTTP/2 connections without requests.
            let activity = Activity::default();
            let requests = activity.clone();
            // X-Forwarded-For's element for this client, formatted once per connection.
            let client_ip = crate::http1::headers::client_ip_value(peer.ip());
            // An upgraded tunnel outlives its HTTP connection: it holds a drain signal of its
            // own, so that shutdown waits for it as for a tcp session.
            let drain = signal.clone();
            let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let tunnel_drain = req.headers().contains_key(http::header::UPGRADE).then(|| drain.clone());
                requests.track(proxy.clone().handle(req, peer, client_ip.clone(), tunnel_drain))
            });
            let stream = CheckedStream::new(stream, activity.clone(), rt.max_headers);
            let conn = rt.builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
            let started = std::time::Instant::now();
            tokio::pin!(conn);
            // The status hyper answered a head it could not parse with, if it did.
            let mut hyper_answer = None;
            tokio::select! {
                res = conn.as_mut() => {
                    if let Err(e) = res {
                        tracing::debug!(listener = %rt.name, client = %peer, error = %e, "connection ended with error");
                        hyper_answer = e.downcast_ref::<hyper::Error>().and_then(hyper_parse_answer);
                    }
                }
                _ = signal.triggered() => {
                    conn.as_mut().graceful_shutdown();
                    finish(conn, &activity, rt, peer).await;
                }
                // A refused head: answer what came before it, then the refusal, then close.
                _ = activity.reading_stopped() => {
                    tracing::debug!(listener = %rt.name, client = %peer, "request head refused; closing");
                    conn.as_mut().graceful_shutdown();
                    finish(conn, &activity, rt, peer).await;
                }
                expired = activity.expired(rt.timeouts) => match expired {
                    Expired::NoRequest => {
                        tracing::debug!(listener = %rt.name, client = %peer, "no request within header_timeout; closing");
                    }
                    Expired::SlowHead => {
                        tracing::debug!(listener = %rt.name, client = %peer, "request head not complete within header_timeout; closing");
                    }
                    Expired::Stalled => {
                        tracing::debug!(listener = %rt.name, client = %peer, "client read nothing for idle_timeout; closing");
                    }
                    Expired::Idle => {
                        conn.as_mut().graceful_shutdown();
                        // Nothing is in flight, yet hyper may still be reading a request body
                        // whose answer is long complete (a client trickling chunks to a backend
                        // that answered early): one more idle_timeout, not for ever.
                        if tokio::time::timeout(rt.timeouts.idle, finish(conn, &activity, rt, peer)).await.is_err() {
                            tracing::debug!(listener = %rt.name, client = %peer, "request body still arriving after its answer; closing");
                        }
                    }
                },
            }
            // A head refused before it became a request is answered all the same: count and
            // log that answer like lb's others.
            if let Some((status, bytes)) = activity.own_answer().or(hyper_answer.map(|s| (s, 0))) {
                rt.own_answer_before_request(peer, status, bytes, started);
            }
        }
    }
}

/// The status hyper answers a request head it cannot parse with (its `on_error`: `431`, `414`
/// or `400`, with an empty body), or `None` when the error is not one it answers.
fn hyper_parse_answer(e: &hyper::Error) -> Option<u16> {
    if !e.is_parse() || e.is_parse_status() || e.is_parse_version_h2() {
        return None;
    }
    // Only the message tells the two "too large" kinds apart, and an internal error from one
    // hyper answers.
    let text = e.to_string();
    if e.is_parse_too_large() {
        Some(if text.contains("URI too long") { 414 } else { 431 })
    } else if text.contains("internal error") {
        None
    } else {
        Some(400)
    }
}

impl ListenerRuntime {
    /// Counts (`lb_requests_total{backend=""}`) and logs an answer given to a head that never
    /// became a request (refused on the byte stream, or unparsable for hyper). The access-log
    /// line has `method=-` and `path="-"`: nothing of the head is trusted.
    fn own_answer_before_request(&self, peer: SocketAddr, status: u16, bytes: u64, started: std::time::Instant) {
        let pool = self.route.load().load().name.clone();
        let code = status.to_string();
        self.http.metrics.local_requests.with_label_values(&[&*self.name, &*pool, &code]).inc();
        // Timed from when the connection began to be served (no request was ever read) to its
        // end, so that the histogram's count stays the counter's.
        self.http
            .metrics
            .local_duration
            .with_label_values(&[&*self.name, &*pool])
            .observe(started.elapsed().as_secs_f64());
        if let Some(log) = &self.access_log {
            log.refused(&self.name, peer, status, bytes, started);
        }
    }
}

/// Lets a connection that was told to shut down gracefully finish its response, unless the
/// client stops reading it: then it is dropped after `idle_timeout` without progress.
async fn finish<F: Future>(conn: Pin<&mut F>, activity: &Activity, rt: &ListenerRuntime, peer: SocketAddr) {
    tokio::select! {
        _ = conn => {}
        _ = activity.stalled(rt.timeouts.idle) => {
            tracing::debug!(listener = %rt.name, client = %peer, "client read nothing for idle_timeout; closing");
        }
    }
}
