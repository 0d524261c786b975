//! The client side of TLS to backends.
//!
//! A pool whose backends use TLS (`tls = true`) gets one [`TlsClient`] per configuration load:
//! the trusted CAs (`tls_ca`, or the system's store) and the rustls `ClientConfig` built from
//! them, so connections share its session cache and nothing is parsed per connection. Each TLS
//! backend carries an [`UpstreamTls`]: that client config and the server name it is checked
//! against (`tls_sni`, or the host the backend's address was written with; an IP address is
//! checked against the certificate's IP names and sends no SNI, as TLS requires).

use std::collections::hash_map::DefaultHasher;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio_rustls::TlsConnector;

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

    /// Performs the handshake on a connection to this backend.
    pub fn connector(&self) -> &TlsConnector {
        &self.connector
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
