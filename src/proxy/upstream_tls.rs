//! Connections to backends: TCP, then optionally a PROXY protocol header, then optionally TLS.
//!
//! A pool whose backends use TLS (`tls = true`) gets one [`TlsClient`] per configuration load:
//! the trusted CAs (`tls_ca`, or the system's store) and the rustls `ClientConfig` built from
//! them, so connections share its session cache and nothing is parsed per connection. Each TLS
//! backend carries an [`UpstreamTls`]: that client config and the server name it is checked
//! against (`tls_sni`, or the host the backend's address was written with; an IP address is
//! checked against the certificate's IP names and sends no SNI, as TLS requires).
//!
//! [`open`] returns a [`BackendStream`], plain or TLS, which the HTTP client, the TCP splice and
//! the health probes all use. A plain connection stays a bare `TcpStream` inside the enum, so it
//! costs one branch per read or write.

use std::collections::hash_map::DefaultHasher;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::proxy_protocol::{self, Addresses};
use crate::config::ProxyVersion;

/// The trust side of a pool's TLS to its backends, built once per configuration load.
#[derive(Clone)]
pub struct TlsClient {
    /// The `tls_ca` file, or `None` for the system's CA store.
    pub ca: Option<PathBuf>,
    certs: Arc<[CertificateDer<'static>]>,
    /// Hash of the CA certificates, so that a backend's idle connections can be told apart
    /// from those made under another CA set.
    fingerprint: u64,
    config: Arc<ClientConfig>,
}

impl PartialEq for TlsClient {
    /// Same file and same certificates: the built client config follows from them.
    fn eq(&self, other: &Self) -> bool {
        self.ca == other.ca && self.certs == other.certs
    }
}

impl fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClient").field("ca", &self.ca).field("certs", &self.certs.len()).finish()
    }
}

impl TlsClient {
    /// Reads the CAs from `ca` (PEM; every certificate in it must be a usable trust anchor) or
    /// from the system's store, and builds the client config. The error is a sentence for
    /// `--check`.
    pub fn load(ca: Option<&Path>) -> Result<TlsClient, String> {
        let mut roots = RootCertStore::empty();
        let certs: Vec<CertificateDer<'static>> = match ca {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| format!("cannot read CA certificates from {}: {e}", path.display()))?;
                if certs.is_empty() {
                    return Err(format!("no certificate found in CA file {}", path.display()));
                }
                for (i, c) in certs.iter().enumerate() {
                    roots.add(c.clone()).map_err(|e| {
                        format!("certificate {} in CA file {} is not a usable CA: {e}", i + 1, path.display())
                    })?;
                }
                certs
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(found.certs.iter().cloned());
                if added == 0 {
                    let why = found.errors.first().map(|e| format!(" ({e})")).unwrap_or_default();
                    return Err(format!("no usable system CA certificates found{why}; set tls_ca"));
                }
                found.certs
            }
        };
        let config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("TLS setup failed: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut h = DefaultHasher::new();
        certs.hash(&mut h);
        Ok(TlsClient {
            ca: ca.map(Path::to_path_buf),
            certs: certs.into(),
            fingerprint: h.finish(),
            config: Arc::new(config),
        })
    }
}

/// How one backend is reached over TLS.
#[derive(Clone)]
pub struct UpstreamTls {
    connector: TlsConnector,
    server_name: ServerName<'static>,
    /// Identifies (CA set, server name); never 0, which stands for plain TCP.
    id: u64,
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTls").field("server_name", &self.server_name).finish_non_exhaustive()
    }
}

impl UpstreamTls {
    pub fn new(client: &TlsClient, server_name: ServerName<'static>) -> UpstreamTls {
        let mut h = DefaultHasher::new();
        (client.fingerprint, &server_name).hash(&mut h);
        UpstreamTls { connector: TlsConnector::from(client.config.clone()), server_name, id: h.finish() | 1 }
    }

    pub fn server_name(&self) -> &ServerName<'static> {
        &self.server_name
    }

    /// Which kind of connection this backend's idle pool holds (see `ConnPool::set_transport`).
    pub fn id(&self) -> u64 {
        self.id
    }
}

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
        Some(t) => match t.connector.connect(t.server_name.clone(), tcp).await {
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

/// The server name a backend is checked against: `sni` when given, else the host part of the
/// address as written (`"api.internal:443"` → `api.internal`, `"[::1]:443"` → `::1`). IP
/// addresses become IP server names.
pub fn server_name(sni: Option<&str>, addr_as_written: &str) -> Result<ServerName<'static>, String> {
    let host = match sni {
        Some(s) => s.trim(),
        None => {
            let a = addr_as_written.trim();
            match a.strip_prefix('[').and_then(|r| r.split_once(']')) {
                Some((ip, _)) => ip,
                None => a.rsplit_once(':').map_or(a, |(h, _)| h),
            }
        }
    };
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(ServerName::from(ip));
    }
    ServerName::try_from(host.to_owned()).map_err(|_| format!("{host:?} is not a valid DNS name or IP address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_default_to_the_written_host() {
        let name = |sni, addr| server_name(sni, addr).map(|n| n.to_str().into_owned());
        assert_eq!(name(None, "api.internal:443").unwrap(), "api.internal");
        assert_eq!(name(None, "127.0.0.1:443").unwrap(), "127.0.0.1");
        assert!(matches!(server_name(None, "127.0.0.1:443"), Ok(ServerName::IpAddress(_))));
        assert!(matches!(server_name(None, "[::1]:443"), Ok(ServerName::IpAddress(_))));
        assert_eq!(name(Some("backend.test"), "10.0.0.1:443").unwrap(), "backend.test");
        assert!(server_name(Some("bad name"), "10.0.0.1:443").is_err());
        assert!(server_name(Some(""), "10.0.0.1:443").is_err());
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = std::env::temp_dir().join(format!("lb-upstream-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("empty.pem");
        std::fs::write(&f, "not a certificate\n").unwrap();
        assert!(TlsClient::load(Some(&f)).unwrap_err().contains("no certificate found"));
        assert!(TlsClient::load(Some(&dir.join("missing.pem"))).unwrap_err().contains("cannot read"));
    }
}
