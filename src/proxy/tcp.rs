//! L4 forwarding: one client connection → one backend connection, bytes copied both ways.
//!
//! The backend is chosen by the pool's strategy per connection (a session counts as one in
//! flight for least_connections). The backend connection may start with a PROXY protocol header
//! (`send_proxy`) and be TLS (`tls`); a failed connect, header write or TLS handshake fails over
//! to another backend before any byte of the client's is exchanged. Half-close is propagated: when one side shuts down its write half, the
//! other side's write half is shut down too and the opposite direction keeps flowing until it
//! also ends. The same copy loop carries upgraded HTTP connections (WebSocket).
//!
//! A session in which no byte has been delivered either way for the listener's `idle_timeout`
//! is closed: a peer that vanished without a FIN (a dropped NAT entry, a powered-off host) or a
//! client that stopped reading would otherwise hold the session, its backend connection and a
//! `max_connections` permit forever.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::failover::Failover;
use crate::backend::{Backend, InFlight, TryTimer};
use crate::metrics::Metrics;
use crate::pool::Route;
use crate::shutdown::Signal;

use super::limits;
use crate::proxy_protocol::Addresses;
use crate::upstream::{self, BackendStream, OpenError, Preface};

/// Per-chunk byte counters of a listener: (from clients, to clients).
pub type ByteCounters = (IntCounter, IntCounter);

/// How a TCP session went, for the access log.
pub struct Session {
    pub backend: Arc<Backend>,
    pub from_client: u64,
    pub to_client: u64,
    pub retries: usize,
}

/// Proxies one accepted TCP connection to a backend of `pool`, counting bytes into `bytes` as
/// they flow. `peer` is the client and `local` the address it connected to (both from the
/// PROXY header on an `accept_proxy` listener); a `send_proxy` pool passes them on. The session
/// ends after `idle` without a byte delivered either way. Returns the session, or `None` when
/// no backend could be reached.
pub async fn proxy_connection<C>(
    client: C,
    peer: SocketAddr,
    local: SocketAddr,
    pool: &Route,
    metrics: &Metrics,
    bytes: Option<&ByteCounters>,
    idle: Duration,
) -> Option<Session>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let pool = pool.load().load_full();
    // consistent_hash: a byte stream's only key is the client IP (`None` for other strategies).
    let key_hash = pool.kind.connection_key_hash(peer.ip());
    let preface = pool.settings.send_proxy.map(|v| Preface::Relay(v, Addresses { source: peer, destination: local }));
    let mut retries = 0;
    let mut failover = Failover::new(&pool, key_hash, &mut retries);
    loop {
        let Some(idx) = failover.next(metrics) else {
            tracing::warn!(pool = %pool.name, client = %peer, tried = failover.failures(), "no backend reachable for tcp session");
            return None;
        };
        let backend = &pool.backends[idx];
        let guard = pool.acquire(idx);
        // least_time: the connect time feeds the backend's estimate; a failed connect counts
        // as one that took connect_timeout.
        let timer = TryTimer::start(pool.kind);
        let open = upstream::open(backend.addr, backend.tls(), preface);
        match tokio::time::timeout(pool.settings.connect_timeout, open).await {
            Ok(Ok(upstream)) => {
                timer.succeeded(backend);
                // A plain socket splits into owned halves without a lock; TLS needs the shared split.
                let (from_client, to_client) = match upstream {
                    BackendStream::Plain(s) => {
                        let (r, w) = s.into_split();
                        splice(client, r, w, bytes, idle).await
                    }
                    BackendStream::Tls(s) => {
                        let (r, w) = tokio::io::split(*s);
                        splice(client, r, w, bytes, idle).await
                    }
                };
                drop(guard);
                return Some(Session { backend: backend.clone(), from_client, to_client, retries: failover.retries() });
            }
            Ok(Err(e)) => {
                tracing::warn!(pool = %pool.name, backend = %backend.name, error = %e, "tcp backend connect failed");
                // lb out of descriptors is not the backend's fault (see limits::out_of_descriptors).
                let exhausted = matches!(&e, OpenError::Connect(err) if limits::io_out_of_descriptors(err));
                if !exhausted {
                    pool.passive_failure(backend, e.reason());
                }
            }
            Err(_) => {
                tracing::warn!(pool = %pool.name, backend = %backend.name, "tcp backend connect timed out");
                pool.passive_failure(backend, "connect timed out");
            }
        }
        timer.failed(backend, pool.settings.connect_timeout);
        if !failover.failed(idx) {
            return None;
        }
    }
}

/// Copy buffer per direction to start with. 16 KiB (HAProxy's default) keeps 10,000 idle
/// sessions cheap.
const BUF: usize = 16 * 1024;

/// A direction whose reads keep filling the buffer is a bulk transfer: its buffer doubles up to
/// this, so that it moves more bytes per system call.
const MAX_BUF: usize = 256 * 1024;

/// Copies both ways until both sides have closed, propagating half-close, and returns the bytes
/// (from the client, to the client). The first error ends both directions, and so does `idle`
/// without a byte delivered either way.
async fn splice<C, R, W>(client: C, up_r: R, up_w: W, bytes: Option<&ByteCounters>, idle: Duration) -> (u64, u64)
where
    C: AsyncRead + AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (client_r, client_w) = tokio::io::split(client);
    let (mut sent, mut received) = (0u64, 0u64);
    let progress = Progress::new();
    let c2u = pump(client_r, up_w, bytes.map(|b| &b.0), &mut sent, &progress);
    let u2c = pump(up_r, client_w, bytes.map(|b| &b.1), &mut received, &progress);
    tokio::select! {
        r = async { tokio::try_join!(c2u, u2c) } => if let Err(e) = r {
            tracing::debug!(error = %e, "tcp session ended with an error");
        },
        _ = progress.stalled(idle) => tracing::debug!(?idle, "no byte either way for idle_timeout; closing the session"),
    }
    (sent, received)
}

/// When a session last delivered a byte, kept as milliseconds since it started so that both
/// directions can note it without a lock.
struct Progress {
    start: Instant,
    last_ms: AtomicU64,
}

impl Progress {
    fn new() -> Self {
        Progress { start: Instant::now(), last_ms: AtomicU64::new(0) }
    }

    fn moved(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `idle`. Sleeps until the earliest moment that could
    /// be true and looks again then, so that traffic costs no timer re-arm per chunk.
    async fn stalled(&self, idle: Duration) {
        loop {
            let due = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + idle;
            if due <= Instant::now() {
                return;
            }
            tokio::time::sleep_until(due).await;
        }
    }
}

/// Copies `from` into `to` until EOF, then shuts down `to`'s write side so the peer sees the
/// half-close. Counts every chunk as it goes, so long sessions show up in metrics live, and
/// notes in `progress` every write the other side took (a slow reader is still progress).
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    counter: Option<&IntCounter>,
    total: &mut u64,
    progress: &Progress,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        let mut done = 0;
        while done < n {
            let w = to.write(&buf[done..n]).await?;
            if w == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            done += w;
            progress.moved();
        }
        // TLS may have taken the bytes without sending them all (the socket was full): they go
        // out only on a flush, and the other side may send nothing more to prompt one. A no-op
        // on plain TCP.
        to.flush().await?;
        progress.moved();
        *total += n as u64;
        if let Some(c) = counter {
            c.inc_by(n as u64);
        }
        if n == buf.len() && buf.len() < MAX_BUF {
            buf.resize(buf.len() * 2, 0);
        }
    }
}

/// Joins an upgraded client connection to an upgraded backend connection (WebSocket and other
/// `Upgrade:` protocols) and copies until both sides close, or until `idle` passes without a
/// byte either way. `in_flight` counts the tunnel, and `drain` (held until it ends) makes
/// shutdown wait for it, up to `--shutdown-timeout`.
pub async fn tunnel_upgraded(
    client: OnUpgrade,
    backend: OnUpgrade,
    in_flight: InFlight,
    idle: Duration,
    drain: Option<Signal>,
) {
    let (client, backend) = match tokio::try_join!(client, backend) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let client: TokioIo<Upgraded> = TokioIo::new(client);
    let (up_r, up_w) = tokio::io::split(TokioIo::new(backend));
    splice(client, up_r, up_w, None, idle).await;
    drop((in_flight, drain));
}
