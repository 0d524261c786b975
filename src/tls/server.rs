//! TLS termination with rustls: certificate files → a `ServerConfig` with an SNI resolver.
//!
//! A listener may carry several certificate/key pairs. The client's SNI narrows them to the pairs
//! whose certificate is valid for that name (checked with webpki against the certificate's
//! subject alternative names, wildcards included); without SNI or without a match, all pairs
//! are in the running. Of those, the first pair whose key can sign with a scheme the client
//! offers wins, so one name can have an ECDSA and an RSA certificate and clients that only
//! verify RSA get the RSA one (rustls has already narrowed the offered schemes to the client's
//! TLS 1.2 cipher suites). Only TLS 1.3 and 1.2 are offered. In http mode ALPN offers `h2` and
//! `http/1.1`. Configs are built at load time, so a reload serves renewed files, and a file
//! that does not parse rejects the reload (and `--check`) with the file named.
//!
//! Resumption: stateless tickets (TLS 1.3, and TLS 1.2 clients that ask for them) under
//! rotating keys, and a large session-ID cache for the TLS 1.2 clients that do not.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// One certificate chain and its key (`[[listeners.tls]]`), as absolute or config-relative
/// paths made absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsCertConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A certificate or key that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificates from {}: {source}", .path.display())]
    Cert { path: PathBuf, source: rustls_pki_types::pem::Error },
    #[error("no certificate found in {}", .0.display())]
    NoCert(PathBuf),
    #[error("cannot read private key from {}: {source}", .path.display())]
    Key { path: PathBuf, source: rustls_pki_types::pem::Error },
    #[error("certificate {} and key {} do not form a usable pair: {source}", .cert.display(), .key.display())]
    Pair { cert: PathBuf, key: PathBuf, source: rustls::Error },
    #[error("TLS setup failed: {0}")]
    Setup(rustls::Error),
}

/// TLS 1.2 sessions kept for resumption by session ID, per listener (rustls' default is 256,
/// which a few hundred clients flush). ~20k entries of about 200 bytes: a few MB at most, and
/// only TLS 1.2 clients without ticket support fill it.
const SESSION_CACHE_ENTRIES: usize = 20_480;

/// Chooses the certificate by SNI and by what the client can verify; see the module doc.
struct SniResolver {
    /// (leaf certificate, signing key), in configuration order.
    certs: Vec<(CertificateDer<'static>, Arc<CertifiedKey>)>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver").field("certs", &self.certs.len()).finish()
    }
}

impl SniResolver {
    /// The pairs whose certificate is valid for `sni`, in configuration order.
    fn matching(&self, sni: &str) -> Vec<&Arc<CertifiedKey>> {
        let Ok(name) = ServerName::try_from(sni) else { return Vec::new() };
        self.certs
            .iter()
            .filter(|(leaf, _)| {
                webpki::EndEntityCert::try_from(leaf)
                    .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
            })
            .map(|(_, key)| key)
            .collect()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let named = hello.server_name().map(|sni| self.matching(sni)).unwrap_or_default();
        let candidates = if named.is_empty() { self.certs.iter().map(|(_, k)| k).collect() } else { named };
        // The first one the client can verify; else the first, so that the handshake fails
        // with "no signature schemes in common" as it would with that certificate alone.
        let schemes = hello.signature_schemes();
        candidates.iter().find(|k| k.key.choose_scheme(schemes).is_some()).or(candidates.first()).map(|k| Arc::clone(k))
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_pair(
    c: &TlsCertConfig,
    provider: &CryptoProvider,
) -> Result<(CertificateDer<'static>, Arc<CertifiedKey>), TlsError> {
    let chain = CertificateDer::pem_file_iter(&c.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Cert { path: c.cert.clone(), source })?;
    let leaf = chain.first().cloned().ok_or_else(|| TlsError::NoCert(c.cert.clone()))?;
    let key = PrivateKeyDer::from_pem_file(&c.key).map_err(|source| TlsError::Key { path: c.key.clone(), source })?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|source| TlsError::Pair {
        cert: c.cert.clone(),
        key: c.key.clone(),
        source,
    })?;
    Ok((leaf, Arc::new(certified)))
}

/// Reads and checks one pair, as `--check` and reloads do before anything is built.
pub fn check_pair(pair: &TlsCertConfig) -> Result<(), TlsError> {
    load_pair(pair, &provider()).map(|_| ())
}

/// Builds the server side of TLS for one listener. `http` adds ALPN for h2 and http/1.1.
pub fn server_config(certs: &[TlsCertConfig], http: bool) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let pairs = certs.iter().map(|c| load_pair(c, &provider)).collect::<Result<Vec<_>, _>>()?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Setup)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { certs: pairs }));
    cfg.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
    // Tickets keep resumption working however many clients come and go; ring's ticketer
    // encrypts them under a key replaced every 6 hours (tickets live 12), so a stolen key
    // exposes little.
    cfg.ticketer = rustls::crypto::ring::Ticketer::new().map_err(TlsError::Setup)?;
    if http {
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    }
    Ok(Arc::new(cfg))
}
