//! Upstream connections: a small keep-alive pool of HTTP/1.1 connections per backend.
//!
//! We drive `hyper::client::conn::http1` directly instead of a generic pooled client because the
//! proxy must know exactly what happened to a request: whether the TCP connect failed (always
//! safe to try another backend, body and all), whether a pooled connection turned out to be
//! stale before the request was written (hyper hands the request back: retry on a fresh
//! connection), or whether the request may have reached the backend (only idempotent, bodiless
//! requests may be replayed). A connection goes back to its backend's idle list only after its
//! response body has been read to the end, so a half-read connection is never reused.

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

use super::upstream_tls::{self, OpenError, UpstreamTls};
use crate::access_log::{AccessLog, HttpEntry};
use crate::pool::{Backend, InFlight};

/// Body of a request sent upstream: the client's streamed body (cut off at `max_body_bytes`),
/// or nothing (so that a bodiless request can be rebuilt for a retry).
pub type UpBody = Either<super::guard::ClientBody, Empty<Bytes>>;

/// A ready-to-use upstream connection.
pub type Sender = SendRequest<UpBody>;

/// Idle connections kept per backend and worker; beyond this a finished connection is closed.
const MAX_IDLE_PER_BACKEND: usize = 512;

/// Idle keep-alive connections of one backend, kept per worker: a connection's driver task runs
/// on the worker that opened it, so a request only takes connections of its own worker and
/// never wakes another thread (see [`crate::workers`]). Each lock is held only for a push or
/// pop, by its own worker (or by a reload clearing the pool).
#[derive(Debug)]
pub struct ConnPool {
    idle: Box<[Mutex<Vec<Sender>>]>,
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

fn lock(m: &Mutex<Vec<Sender>>) -> std::sync::MutexGuard<'_, Vec<Sender>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ConnPool {
    fn mine(&self) -> &Mutex<Vec<Sender>> {
        &self.idle[crate::workers::slot()]
    }

    /// An idle connection of this worker that is still open, most recently used first
    /// (warmest socket).
    pub fn take(&self) -> Option<Sender> {
        let mut idle = lock(self.mine());
        while let Some(s) = idle.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    /// Returns a connection whose last exchange completed. `transport` is what it was opened
    /// as ([`Backend::transport_id`] of the backend it was opened for); a connection opened
    /// before a reload changed the backend's TLS settings is closed instead of kept.
    pub fn put(&self, s: Sender, transport: u64) {
        if s.is_closed() || transport != self.transport.load(Ordering::Relaxed) {
            return;
        }
        let mut idle = lock(self.mine());
        if idle.len() < MAX_IDLE_PER_BACKEND {
            idle.push(s);
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
        self.idle.iter().for_each(|m| lock(m).clear());
    }

    /// Idle connections over all workers.
    pub fn idle_len(&self) -> usize {
        self.idle.iter().map(|m| lock(m).len()).sum()
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

/// Opens a new HTTP/1.1 connection to `addr` (over TLS when `tls` is set; connect and TLS
/// handshake both within `timeout`) and spawns its driver task.
pub async fn connect(addr: SocketAddr, tls: Option<&UpstreamTls>, timeout: Duration) -> Result<Sender, ConnectError> {
    let stream = match tokio::time::timeout(timeout, upstream_tls::open(addr, tls, None)).await {
        Err(_) => return Err(ConnectError::Timeout(addr)),
        Ok(Err(OpenError::Tls(e))) => return Err(ConnectError::Tls(addr, e)),
        Ok(Err(OpenError::Connect(e) | OpenError::Preface(e))) => return Err(ConnectError::Io(addr, e)),
        Ok(Ok(s)) => s,
    };
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

/// A response body from a backend. It keeps the request counted in flight until the body has
/// been passed on completely (or dropped), and gives the connection back to the backend's pool
/// when the body ended cleanly.
pub struct UpstreamBody {
    inner: Incoming,
    reuse: Option<Sender>,
    in_flight: Option<InFlight>,
    /// Where the request's duration goes, and when the request arrived.
    observe: (Histogram, Instant),
    /// Body bytes passed on so far (for the access log).
    bytes: u64,
    /// The access log line to write when the body ends: log, entry, status.
    log: Option<Box<(Arc<AccessLog>, HttpEntry, u16)>>,
}

impl UpstreamBody {
    pub fn new(inner: Incoming, reuse: Option<Sender>, in_flight: InFlight, observe: (Histogram, Instant)) -> Self {
        let mut body = UpstreamBody { inner, reuse, in_flight: Some(in_flight), observe, bytes: 0, log: None };
        if body.inner.is_end_stream() {
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
        if let Some(guard) = self.in_flight.take() {
            self.observe.0.observe(self.observe.1.elapsed().as_secs_f64());
            if let (true, Some(s)) = (clean, self.reuse.take()) {
                let backend = guard.backend();
                backend_pool(backend).put(s, backend.transport_id());
            }
        }
        self.reuse = None;
    }
}

fn backend_pool(b: &Arc<Backend>) -> &ConnPool {
    b.conns()
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // The client went away before the end: count the request as done, do not reuse.
        self.finish(false);
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let res = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &res {
            if let Some(data) = frame.data_ref() {
                this.bytes += data.len() as u64;
            }
        }
        match &res {
            Poll::Ready(None) => this.finish(true),
            Poll::Ready(Some(Err(_))) => this.finish(false),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.finish(true),
            _ => {}
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
