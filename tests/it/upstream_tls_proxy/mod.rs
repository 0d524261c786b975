//! TLS to backends and the PROXY protocol, over real sockets on 127.0.0.1 with certificates made
//! by rcgen: HTTPS backends checked against a configured CA with SNI (and connections reused),
//! a certificate from another CA refused (502, a passive failure), tcp mode over TLS,
//! health checks over TLS; PROXY v1/v2 headers written to tcp backends byte for byte, and read
//! from fronting proxies on `accept_proxy` listeners (X-Forwarded-For, relayed on, before TLS,
//! in pieces), with connections lacking a valid header closed unserved; `--check` errors.

mod check;
mod proxy_accept;
mod proxy_send;
mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---- certificates ----

struct Ca {
    pem: String,
    der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

fn make_ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca { pem: cert.pem(), der: cert.der().clone(), issuer: Issuer::new(params, key) }
}

/// A leaf certificate for `names` (DNS names or IP addresses) signed by `ca`.
fn make_leaf(ca: &Ca, names: &[&str]) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let params = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (vec![cert.der().clone()], PrivateKeyDer::try_from(key.serialize_der()).unwrap())
}

/// Writes `ca` as `dir/NAME` and returns the path.
fn write_ca(dir: &Path, name: &str, ca: &Ca) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, &ca.pem).unwrap();
    p
}

fn server_config(leaf: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)) -> Arc<rustls::ServerConfig> {
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(leaf.0, leaf.1)
        .unwrap();
    Arc::new(cfg)
}

// ---- shared by the submodules ----

/// Sends `payload`, half-closes, and returns everything the other side sent until it closed.
async fn exchange(addr: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(payload).await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.unwrap().unwrap();
    out
}

/// A PROXY v2 header for TCP over IPv4, written out by hand (independent of lb's encoder).
fn ppv2_tcp4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\x00\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0x00, 0x0c]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h
}

fn ip4(a: SocketAddr) -> [u8; 4] {
    match a.ip() {
        std::net::IpAddr::V4(v4) => v4.octets(),
        other => panic!("not IPv4: {other}"),
    }
}

fn http_listener(extra: &str) -> String {
    format!("[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n{extra}\n\n")
}

fn tcp_listener(extra: &str) -> String {
    format!("[[listeners]]\nname = \"l4\"\nbind = \"127.0.0.1:0\"\nmode = \"tcp\"\npool = \"p\"\n{extra}\n\n")
}
