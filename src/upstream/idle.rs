//! Idle upstream connections: a small keep-alive pool of HTTP/1.1 connections per backend, and
//! opening new ones.
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use super::body::UpBody;
use super::connect::{self, BackendStream, OpenError};
use super::h1_client::H1Conn;
use crate::tls::UpstreamTls;

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
    /// as ([`crate::backend::Backend::transport_id`] of the backend it was opened for); a connection opened
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
    match tokio::time::timeout(timeout, connect::open(addr, tls, None)).await {
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
