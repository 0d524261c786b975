//! L4 forwarding: one client connection → one backend connection, bytes copied both ways.
//!
//! The backend is chosen by the pool's strategy per connection (a session counts as one in
//! flight for least_connections). A failed connect fails over to another backend before any
//! byte is exchanged. Half-close is propagated: when one side shuts down its write half, the
//! other side's write half is shut down too and the opposite direction keeps flowing until it
//! also ends. The same copy loop carries upgraded HTTP connections (WebSocket).

use std::net::SocketAddr;

use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{copy_bidirectional, AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::balance::{PickCtx, TryTimer};
use crate::health;
use crate::metrics::Metrics;
use crate::pool::{InFlight, Route};

/// Proxies one accepted TCP connection to a backend of `pool`. Returns the bytes copied
/// (from the client, to the client), or `None` when no backend could be reached.
pub async fn proxy_connection<C>(mut client: C, peer: SocketAddr, pool: &Route, metrics: &Metrics) -> Option<(u64, u64)>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let pool = pool.load().load_full();
    // consistent_hash: a byte stream's only key is the client IP (`None` for other strategies).
    let key_hash = pool.kind.connection_key_hash(peer.ip());
    let mut tried = Vec::new();
    loop {
        let Some(idx) = pool.pick(&PickCtx { tried: &tried, key_hash }) else {
            tracing::warn!(pool = %pool.name, client = %peer, tried = tried.len(), "no backend reachable for tcp session");
            return None;
        };
        let backend = &pool.backends[idx];
        let guard = pool.acquire(idx);
        // least_time: the connect time feeds the backend's estimate; a failed connect counts
        // as one that took connect_timeout.
        let timer = TryTimer::start(pool.kind);
        match tokio::time::timeout(pool.settings.connect_timeout, TcpStream::connect(backend.addr)).await {
            Ok(Ok(mut upstream)) => {
                timer.succeeded(backend);
                let _ = upstream.set_nodelay(true);
                let copied = copy_bidirectional(&mut client, &mut upstream).await;
                drop(guard);
                return match copied {
                    Ok(n) => Some(n),
                    Err(e) => {
                        tracing::debug!(pool = %pool.name, backend = %backend.name, error = %e, "tcp session ended with error");
                        Some((0, 0))
                    }
                };
            }
            Ok(Err(e)) => {
                tracing::warn!(pool = %pool.name, backend = %backend.name, error = %e, "tcp backend connect failed");
                health::passive_failure(&pool, backend, "connect failed");
            }
            Err(_) => {
                tracing::warn!(pool = %pool.name, backend = %backend.name, "tcp backend connect timed out");
                health::passive_failure(&pool, backend, "connect timed out");
            }
        }
        timer.failed(backend, pool.settings.connect_timeout);
        tried.push(idx);
        if tried.len() > pool.settings.retries as usize {
            return None;
        }
        metrics.retries.with_label_values(&[&*pool.name]).inc();
    }
}

/// Joins an upgraded client connection to an upgraded backend connection (WebSocket and other
/// `Upgrade:` protocols) and copies until both sides close. `in_flight` counts the tunnel.
pub async fn tunnel_upgraded(client: OnUpgrade, backend: OnUpgrade, in_flight: InFlight) {
    let (client, backend) = match tokio::try_join!(client, backend) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let mut client: TokioIo<Upgraded> = TokioIo::new(client);
    let mut backend: TokioIo<Upgraded> = TokioIo::new(backend);
    if let Err(e) = copy_bidirectional(&mut client, &mut backend).await {
        tracing::debug!(error = %e, "upgraded tunnel ended with error");
    }
    drop(in_flight);
}
