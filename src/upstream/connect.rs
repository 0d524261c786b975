//! Connections to backends: TCP, then optionally a PROXY protocol header, then optionally TLS
//! (with the backend's [`UpstreamTls`], see `crate::tls::client`).
//!
//! [`open`] returns a [`BackendStream`], plain or TLS, which the HTTP client, the TCP splice and
//! the health probes all use. A plain connection stays a bare `TcpStream` inside the enum, so it
//! costs one branch per read or write.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::proxy_protocol::ProxyVersion;
use crate::proxy_protocol::{self, Addresses};
pub use crate::tls::UpstreamTls;

/// What to write before anything else (and before TLS) on a new backend connection.
#[derive(Debug, Clone, Copy)]
pub enum Preface {
    /// A PROXY header relaying a client's connection.
    Relay(ProxyVersion, Addresses),
    /// A PROXY header for lb's own connection (health check): v2 `LOCAL`; v1 names the
    /// connection's own endpoints, since some servers refuse `UNKNOWN`.
    Own(ProxyVersion),
}

/// Why a backend connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("connect failed: {0}")]
    Connect(io::Error),
    #[error("writing the PROXY header failed: {0}")]
    Preface(io::Error),
    #[error("TLS handshake failed: {0}")]
    Tls(io::Error),
}

impl OpenError {
    /// A short reason for health state and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            OpenError::Connect(_) => "connect failed",
            OpenError::Preface(_) => "PROXY header write failed",
            OpenError::Tls(_) => "TLS handshake failed",
        }
    }
}

/// Connects to `addr`, writes the `preface` if any, then runs the TLS handshake if `tls`. The
/// caller bounds the whole with its timeout.
pub async fn open(
    addr: SocketAddr,
    tls: Option<&UpstreamTls>,
    preface: Option<Preface>,
) -> Result<BackendStream, OpenError> {
    let mut tcp = TcpStream::connect(addr).await.map_err(OpenError::Connect)?;
    // Small requests and responses must not wait for Nagle.
    let _ = tcp.set_nodelay(true);
    if let Some(p) = preface {
        let header = match p {
            Preface::Relay(version, addresses) => proxy_protocol::encode(version, Some(addresses)),
            Preface::Own(ProxyVersion::V2) => proxy_protocol::encode(ProxyVersion::V2, None),
            Preface::Own(ProxyVersion::V1) => {
                let own = tcp.local_addr().map(|source| Addresses { source, destination: addr }).ok();
                proxy_protocol::encode(ProxyVersion::V1, own)
            }
        };
        tcp.write_all(&header).await.map_err(OpenError::Preface)?;
    }
    match tls {
        None => Ok(BackendStream::Plain(tcp)),
        Some(t) => match t.connector().connect(t.server_name().clone(), tcp).await {
            Ok(s) => Ok(BackendStream::Tls(Box::new(s))),
            Err(e) => Err(OpenError::Tls(e)),
        },
    }
}

/// A connection to a backend, plain or TLS.
#[derive(Debug)]
pub enum BackendStream {
    Plain(TcpStream),
    /// Boxed: a TLS session is large, and plain connections should not carry its size.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for BackendStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for BackendStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            BackendStream::Plain(s) => s.is_write_vectored(),
            BackendStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_flush(cx),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
