//! TLS material for tests: self-signed certificates made by rcgen and written where a config can
//! name them, and a client-side verifier that accepts whatever the server presents (the tests
//! look at which certificate that was).

use std::path::Path;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// A certificate and its key, in PEM for lb and in DER for comparing with what a client got.
pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

/// A self-signed certificate (ECDSA P-256) valid for `names`.
pub fn make_cert(names: &[&str]) -> Pair {
    let ck = rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    Pair { cert_pem: ck.cert.pem(), key_pem: ck.signing_key.serialize_pem(), der: ck.cert.der().clone() }
}

/// Writes `dir/<stem>.pem` and `dir/<stem>.key`.
pub fn write_pair(dir: &Path, stem: &str, p: &Pair) {
    std::fs::write(dir.join(format!("{stem}.pem")), &p.cert_pem).unwrap();
    std::fs::write(dir.join(format!("{stem}.key")), &p.key_pem).unwrap();
}

/// All signature schemes ring verifies.
pub fn all_schemes() -> Vec<SignatureScheme> {
    rustls::crypto::ring::default_provider().signature_verification_algorithms.supported_schemes()
}

/// Accepts any server certificate and claims to verify only `schemes`, which is what the client
/// then offers in signature_algorithms ([`Default`]: all of ring's).
#[derive(Debug)]
pub struct AcceptAny {
    pub schemes: Vec<SignatureScheme>,
}

impl Default for AcceptAny {
    fn default() -> Self {
        AcceptAny { schemes: all_schemes() }
    }
}

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}
