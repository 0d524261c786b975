//! Upstream connections: a small keep-alive pool of HTTP/1.1 connections per backend.
//!
//! Two kinds of connection are kept: lb's own client's ([`H1Conn`], for bodiless requests, see
//! `h1_client`) and hyper's (for requests with a body, and upgrades). For the latter we drive
//! `hyper::client::conn::http1` directly instead of a generic pooled client because the
//! proxy must know exactly what happened to a request: whether the TCP connect failed (always
//! safe to try another backend, body and all), whether a pooled connection turned out to be
//! stale before the request was written (hyper hands the request back: retry on a fresh
//! connection), or whether the request may have reached the backend (only idempotent, bodiless
//! requests may be replayed). A connection goes back to its backend's idle list only after its
//! response body has been read to the end, so a half-read connection is never reused.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use prometheus::Histogram;

use super::h1_client::{H1Conn, OwnBody};
use super::upstream_tls::{self, BackendStream, OpenError};
use crate::access_log::{AccessLog, HttpEntry};
use crate::pool::InFlight;
use crate::tls::UpstreamTls;

/// Body of a request sent upstream: the client's streamed body (cut off at `max_body_bytes`),
/// or nothing (so that a bodiless request can be rebuilt for a retry).
pub type UpBody = Either<super::guard::ClientBody, Empty<Bytes>>;

/// A ready-to-use upstream connection.
pub type Sender = SendRequest<UpBody>;

/// Idle connections kept per backend and worker; beyond this a finished connection is closed.
const MAX_IDLE_PER_BACKEND: usize = 512;

/// Idle keep-alive connections of one backend, kept per worker: a connection's socket (and a
/// hyper connection's driver task) belongs to the worker that opened it, so a request only
/// takes connections of its own worker and never wakes another thread (see
/// [`crate::workers`]). Each lock is held only for a push or pop, by its own worker (or by a
/// reload clearing the pool, or the health checker sweeping it).
#[derive(Debug)]
pub struct ConnPool {
    idle: Box<[Mutex<Idle>]>,
    /// What the idle connections are: 0 plain TCP, else the id of the backend's TLS settings.
    transport: AtomicU64,
}

impl Default for ConnPool {
    fn default() -> Self {
        ConnPool {
            idle: (0..crate::workers::slots()).map(|_| Mutex::default()).collect(),
            transport: AtomicU64::new(0),
        }
    }
}

/// One worker's idle connections to one backend. Own connections are a deque: taken and
/// returned at the back (warmest socket first), checked for a backend close at the front.
#[derive(Debug, Default)]
struct Idle {
    hyper: Vec<Sender>,
    own: VecDeque<H1Conn>,
}

fn lock(m: &Mutex<Idle>) -> std::sync::MutexGuard<'_, Idle> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ConnPool {
    fn mine(&self) -> &Mutex<Idle> {
        &self.idle[crate::workers::slot()]
    }

    /// An idle hyper connection of this worker that is still open, most recently used first
    /// (warmest socket).
    pub fn take(&self) -> Option<Sender> {
        let mut idle = lock(self.mine());
        while let Some(s) = idle.hyper.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    /// An idle own connection of this worker that the backend has not closed, warmest first.
    pub fn take_own(&self) -> Option<H1Conn> {
        let mut idle = lock(self.mine());
        while let Some(mut c) = idle.own.pop_back() {
            if c.alive() {
                return Some(c);
            }
        }
        None
    }

    /// Returns an own connection whose exchange completed (see [`ConnPool::put`] for
    /// `transport`). The coldest idle one is checked on the way: one the backend closed is let
    /// go, so that closed sockets do not pile up while traffic flows.
    pub fn put_own(&self, c: H1Conn, transport: u64) {
        if transport != self.transport.load(Ordering::Relaxed) {
            return;
        }
        let mut idle = lock(self.mine());
        if idle.own.front_mut().is_some_and(|c| !c.alive()) {
            idle.own.pop_front();
        }
        if idle.own.len() < MAX_IDLE_PER_BACKEND {
            idle.own.push_back(c);
        }
    }

    /// Lets go of every idle own connection the backend has closed (hyper's connections notice
    /// that themselves). Run by the health checker, so that an idle pool does not hold closed
    /// sockets when traffic stops.
    pub fn sweep(&self) {
        for m in self.idle.iter() {
            lock(m).own.retain_mut(H1Conn::alive);
        }
    }

    /// Returns a connection whose last exchange completed. `transport` is what it was opened
    /// as ([`crate::pool::Backend::transport_id`] of the backend it was opened for); a connection opened
    /// before a reload changed the backend's TLS settings is closed instead of kept.
    pub fn put(&self, s: Sender, transport: u64) {
        if s.is_closed() || transport != self.transport.load(Ordering::Relaxed) {
            return;
        }
        let mut idle = lock(self.mine());
        if idle.hyper.len() < MAX_IDLE_PER_BACKEND {
            idle.hyper.push(s);
        }
    }

    /// Records what new connections to this backend are (plain, or TLS with given settings);
    /// when that changed (a reload), the idle connections of the old kind are closed.
    pub fn set_transport(&self, transport: u64) {
        if self.transport.swap(transport, Ordering::Relaxed) != transport {
            self.clear();
        }
    }

    /// Closes every idle connection of every worker (used when a backend leaves the
    /// configuration).
    pub fn clear(&self) {
        self.idle.iter().for_each(|m| {
            let mut idle = lock(m);
            idle.hyper.clear();
            idle.own.clear();
        });
    }

    /// Idle connections over all workers.
    pub fn idle_len(&self) -> usize {
        self.idle.iter().map(|m| lock(m)).map(|i| i.hyper.len() + i.own.len()).sum()
    }
}

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {0} timed out")]
    Timeout(SocketAddr),
    #[error("connect to {0} failed: {1}")]
    Io(SocketAddr, io::Error),
    #[error("connection to {0} closed before use")]
    Closed(SocketAddr),
    #[error("TLS handshake with {0} failed: {1}")]
    Tls(SocketAddr, io::Error),
    #[error("HTTP handshake with {0} failed: {1}")]
    Handshake(SocketAddr, hyper::Error),
}

/// Opens a connection to `addr` (over TLS when `tls` is set; connect and TLS handshake both
/// within `timeout`).
async fn open(addr: SocketAddr, tls: Option<&UpstreamTls>, timeout: Duration) -> Result<BackendStream, ConnectError> {
    match tokio::time::timeout(timeout, upstream_tls::open(addr, tls, None)).await {
        Err(_) => Err(ConnectError::Timeout(addr)),
        Ok(Err(OpenError::Tls(e))) => Err(ConnectError::Tls(addr, e)),
        Ok(Err(OpenError::Connect(e) | OpenError::Preface(e))) => Err(ConnectError::Io(addr, e)),
        Ok(Ok(s)) => Ok(s),
    }
}

/// Opens a connection for lb's own client.
pub async fn connect_own(
    addr: SocketAddr,
    tls: Option<&UpstreamTls>,
    timeout: Duration,
) -> Result<H1Conn, ConnectError> {
    open(addr, tls, timeout).await.map(H1Conn::new)
}

/// Opens a new HTTP/1.1 connection for hyper's client and spawns its driver task.
pub async fn connect(addr: SocketAddr, tls: Option<&UpstreamTls>, timeout: Duration) -> Result<Sender, ConnectError> {
    let stream = open(addr, tls, timeout).await?;
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ConnectError::Handshake(addr, e))?;
    tokio::spawn(async move {
        // Errors here surface on the request that was using the connection.
        let _ = conn.with_upgrades().await;
    });
    Ok(sender)
}

/// Where a response body comes from: lb's own client's connection, or hyper's (with the
/// connection to give back when the body ended).
enum Source {
    Own(OwnBody),
    Hyper { body: Incoming, reuse: Option<Sender> },
}

/// The error a response body ends with when the backend failed mid-body.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// A response body from a backend. It keeps the request counted in flight until the body has
/// been passed on completely (or dropped), and gives the connection back to the backend's pool
/// when the body ended cleanly.
pub struct UpstreamBody {
    source: Source,
    in_flight: Option<InFlight>,
    /// Where the request's duration goes, and when the request arrived.
    observe: (Histogram, Instant),
    /// Body bytes passed on so far (for the access log).
    bytes: u64,
    /// The access log line to write when the body ends: log, entry, status.
    log: Option<Box<(Arc<AccessLog>, HttpEntry, u16)>>,
}

impl UpstreamBody {
    /// A body read by hyper's client; `reuse` goes back to the pool at a clean end.
    pub fn hyper(inner: Incoming, reuse: Option<Sender>, in_flight: InFlight, observe: (Histogram, Instant)) -> Self {
        Self::new(Source::Hyper { body: inner, reuse }, in_flight, observe)
    }

    /// A body read by lb's own client.
    pub fn own(inner: OwnBody, in_flight: InFlight, observe: (Histogram, Instant)) -> Self {
        Self::new(Source::Own(inner), in_flight, observe)
    }

    fn new(source: Source, in_flight: InFlight, observe: (Histogram, Instant)) -> Self {
        let mut body = UpstreamBody { source, in_flight: Some(in_flight), observe, bytes: 0, log: None };
        if body.is_end_stream() {
            body.finish(true);
        }
        body
    }

    /// Writes an access log line for this response once it has ended (at once if it already has).
    pub fn log_at_end(&mut self, log: Arc<AccessLog>, entry: HttpEntry, status: u16) {
        if self.in_flight.is_none() {
            log.http(&entry, status, self.bytes);
        } else {
            self.log = Some(Box::new((log, entry, status)));
        }
    }

    /// Runs once, when the body ended (cleanly or not) or was dropped unfinished.
    fn finish(&mut self, clean: bool) {
        if let Some(l) = self.log.take() {
            let (log, entry, status) = *l;
            log.http(&entry, status, self.bytes);
        }
        let Some(guard) = self.in_flight.take() else {
            return;
        };
        self.observe.0.observe(self.observe.1.elapsed().as_secs_f64());
        let backend = guard.backend();
        match &mut self.source {
            Source::Hyper { reuse, .. } => {
                if let (true, Some(s)) = (clean, reuse.take()) {
                    backend.conns().put(s, backend.transport_id());
                }
            }
            Source::Own(body) => {
                if let (true, Some(c)) = (clean, body.take_reusable()) {
                    backend.conns().put_own(c, backend.transport_id());
                }
            }
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // The client went away before the end: count the request as done, do not reuse.
        self.finish(false);
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let res: Poll<Option<Result<Frame<Bytes>, BodyError>>> = match &mut this.source {
            Source::Own(body) => match body.poll_data(cx) {
                Poll::Ready(Some(Ok(data))) => Poll::Ready(Some(Ok(Frame::data(data)))),
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            Source::Hyper { body, .. } => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(Some(Ok(f))) => Poll::Ready(Some(Ok(f))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        };
        match &res {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
                if this.is_end_stream() {
                    this.finish(true);
                }
            }
            Poll::Ready(None) => this.finish(true),
            Poll::Ready(Some(Err(_))) => this.finish(false),
            Poll::Pending => {}
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Own(body) => body.is_end(),
            Source::Hyper { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Own(body) => body.exact_len().map_or_else(SizeHint::default, SizeHint::with_exact),
            Source::Hyper { body, .. } => body.size_hint(),
        }
    }
}
