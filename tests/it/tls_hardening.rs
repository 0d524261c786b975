//! TLS termination hardening over real sockets on 127.0.0.1, certificates made by rcgen: an ECDSA
//! and an RSA certificate for the same name on one listener, each client served the one it can
//! verify (RSA-only signature schemes in TLS 1.3, RSA-only cipher suites in TLS 1.2, with and
//! without SNI); session resumption (TLS 1.3 tickets, TLS 1.2 tickets, TLS 1.2 session IDs)
//! still working after 300 other clients' handshakes; and the spawned `lb` binary logging no
//! WARN line for a ClientHello with an IP-literal SNI and a warning alert.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::client::{Resumption, Tls12Resumption};
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, HandshakeKind, SignatureScheme, SupportedProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

use crate::support::{self, all_schemes, lbproc, temp_dir, AcceptAny};

/// A 2048-bit RSA key for tests only (ring, which rcgen uses here, cannot generate RSA keys).
const RSA_KEY: &str = r"-----BEGIN PRIVATE KEY-----
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQC6hG9jDfWGs6d6
PL05Gd//TSgJjngr+8p7/a9KvoEuLQGZwqoM6vE4DnyC0S8mIRldtMfWBde4u5uj
HgnVgqmU64GTIkPRnjmTQBECNPSRaizJSbo050+Mgc/hYjV2iccHiPfIVmIBV7ye
XR0NBjQI3k5jiZy9wkguxCzIbVu1Nni+gZ7W6QaG2SVywo3Kf5E6FNXzSzLvoLkf
jfhcymeJl0S6o3T1gMXVvIxDN+3B4HjZYLQ2TRsW2/KmzqrqAm9BQ/Q05E20Bp5N
ryUusakV3j64XYziXxRPu5qND1h76wRtNAbmv9GNYPqzqtP5ZnRkEj8mrlqi++Wp
RWufsvxfAgMBAAECggEAObH6xLDOOMc88LZ2MAIdhJso3d/os25VQcqE3UGVsyNv
4dDSCmHokRcGE+9CPvCxKIfh4wX2p2m9KJWDpDyhWXQKJmnMgbyIgdCpEj4wQwUN
aox4YaIFvOhw1f6rnAnde6q2Pw3djh3GNlSGRn+bO/0MUYUBa7971Z+QXMVbP2/c
+JNT24gT65Qm2gDVNj6gKDpnLnebd05HGBtXx6zz6Uez1GpeWp29mUb/GesospDo
TXWtBT4T06TLClIvssPAZUl4ktVMRUoPkkZ4bL3GHBv4XdDOhAcrX20fbBNG3z9W
rwcSeShQco2Hep4egtemNyJShRI5l622CD4ZxLXNeQKBgQDt07S+FWEyGoYVmVhg
sFBp2CzvAat9u1w7MajNpHeAVMFydU798KZEyrtohTKeNSK8ACjs+9pBqwRdBqDP
sJjbdpli6LKcZJttKhX2bKBjMxpshui88aAT1gkac11V1EE9/ewM7/BfatSmZUDq
lw4llc92lo9i4cRvEUbhZz2hKQKBgQDIxQa/EP/CCoud9lL4OMcGaaieSmUIbgMW
NG3qk33TDjlPKn/WqCnJMUjsuS/w83SeA0NNLiXUoenZNYINjBgxysGgwbe7Cfk1
I0t2IOg6TRdZUjrdYO4v+wHpwx85S7XMPSn3UmwlCWZgKX6jiH3wOaLEOgOlKbPn
FYOuuVg6RwKBgA/lAkNh8mkC1MtEwF9V6UnppLckiW2RxAxAuWNlBoeRIoyfwnO+
TZ5zXisSG9vu+S9PY2zTODcDUvtUohK/XrfsKTwvCSDiqHCXS3h4sg9vLujp60wV
aflpaJpX83j1Apc+DTSgJJR781JbmgcTqWJhrMfkMBkPta0mnnIaEEhhAoGAX+bF
fzUWhlDVOkI0hb9RSn3j/qCYvDsYnF209202mD9eHrO1VwsC0skJBZK8FMOmO+hh
GJfnmDczZf8KPYBi+j3Y2fpO0jhEYx6V6Dp104uJkLAX0DGB9UdYNZpv6sWAdKvu
xOYJJHPmBB8uD92eEsblOghgP1+5QLPlL+v2+fcCgYBAClnoVOBQRqkjTRJROCEw
LcmkrWa4FL9x0woTDpsKQkzXl9EAPH375e02J5ZM9h8Yumvt3XqUnl++3jqUeYuu
Mek4oWDxHVWzwXGzlheuCLZre0ZlKottrsbZaf4sEU0kt+Vk7D288GLmpDSXimjz
O1Ks9nVsEEckEcGWhmDDXA==
-----END PRIVATE KEY-----
";

/// Writes `<stem>.pem` and `<stem>.key` for a self-signed certificate valid for `name`, with an
/// ECDSA P-256 key (rcgen's default) or the RSA test key; returns the certificate.
fn write_cert(dir: &Path, stem: &str, name: &str, rsa: bool) -> CertificateDer<'static> {
    let key = if rsa { rcgen::KeyPair::from_pem(RSA_KEY).unwrap() } else { rcgen::KeyPair::generate().unwrap() };
    let cert = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap().self_signed(&key).unwrap();
    std::fs::write(dir.join(format!("{stem}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).unwrap();
    cert.der().clone()
}

/// A TCP backend that writes "hello" and closes.
async fn hello_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.write_all(b"hello").await;
            let _ = s.shutdown().await;
        }
    });
    addr
}

/// A tcp-mode listener "tls" terminating TLS with the pairs `stems` (in that order) from `dir`.
fn tls_config(dir: &Path, stems: &[&str], backend: SocketAddr) -> String {
    let pairs: Vec<String> = stems
        .iter()
        .map(|s| format!("{{ cert = \"{d}/{s}.pem\", key = \"{d}/{s}.key\" }}", d = dir.display()))
        .collect();
    format!(
        "[[listeners]]\nname = \"tls\"\nbind = \"127.0.0.1:0\"\nmode = \"tcp\"\npool = \"p\"\ntls = [{}]\n\n\
         [pools.p]\nstrategy = \"round_robin\"\nbackends = [{{ addr = \"{backend}\" }}]\n",
        pairs.join(", ")
    )
}

fn rsa_schemes() -> Vec<SignatureScheme> {
    all_schemes().into_iter().filter(|s| format!("{s:?}").starts_with("RSA_")).collect()
}

/// A client speaking `version`, verifying `schemes`, with `provider`'s cipher suites.
fn client(
    version: &'static SupportedProtocolVersion,
    schemes: Vec<SignatureScheme>,
    provider: CryptoProvider,
) -> ClientConfig {
    ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[version])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny { schemes }))
        .with_no_client_auth()
}

/// Handshakes with `addr` (SNI `sni`, none for an IP address), reads the backend's "hello" to
/// the end (which also takes in TLS 1.3 session tickets) and returns the certificate presented
/// and the kind of handshake.
async fn connect(addr: SocketAddr, sni: &str, cfg: &Arc<ClientConfig>) -> (CertificateDer<'static>, HandshakeKind) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let mut tls = TlsConnector::from(cfg.clone()).connect(name, tcp).await.unwrap();
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned();
    let kind = tls.get_ref().1.handshake_kind().unwrap();
    let mut got = Vec::new();
    let _ = tls.read_to_end(&mut got).await;
    assert_eq!(got, b"hello");
    (leaf, kind)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecdsa_and_rsa_for_one_name_each_client_gets_the_one_it_can_use() {
    let dir = temp_dir("dual");
    let ecdsa = write_cert(&dir, "ecdsa", "dual.example", false);
    let rsa = write_cert(&dir, "rsa", "dual.example", true);
    let lb = support::start_lb(&tls_config(&dir, &["ecdsa", "rsa"], hello_backend().await)).await;
    let addr = lb.listener_addr("tls").unwrap();
    let v13 = &rustls::version::TLS13;
    let v12 = &rustls::version::TLS12;

    let default13 = Arc::new(client(v13, all_schemes(), ring::default_provider()));
    assert_eq!(connect(addr, "dual.example", &default13).await.0, ecdsa, "first pair preferred");
    let default12 = Arc::new(client(v12, all_schemes(), ring::default_provider()));
    assert_eq!(connect(addr, "dual.example", &default12).await.0, ecdsa, "first pair preferred (1.2)");

    // TLS 1.3: the client's signature_algorithms lists RSA schemes only.
    let rsa13 = Arc::new(client(v13, rsa_schemes(), ring::default_provider()));
    assert_eq!(connect(addr, "dual.example", &rsa13).await.0, rsa, "RSA-only signature schemes");
    assert_eq!(connect(addr, "127.0.0.1", &rsa13).await.0, rsa, "RSA-only, no SNI");

    // TLS 1.2: the client offers ECDHE-RSA cipher suites only (and every signature scheme).
    let rsa_suites = CryptoProvider {
        cipher_suites: vec![
            ring::cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            ring::cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ],
        ..ring::default_provider()
    };
    let rsa12 = Arc::new(client(v12, all_schemes(), rsa_suites));
    assert_eq!(connect(addr, "dual.example", &rsa12).await.0, rsa, "RSA-only cipher suites");
    assert_eq!(connect(addr, "127.0.0.1", &rsa12).await.0, rsa, "RSA-only suites, no SNI");

    // With the RSA pair first, it is the one capable clients get.
    let lb = support::start_lb(&tls_config(&dir, &["rsa", "ecdsa"], hello_backend().await)).await;
    let addr = lb.listener_addr("tls").unwrap();
    assert_eq!(connect(addr, "dual.example", &default13).await.0, rsa, "config order is the preference");
    let ecdsa13 = Arc::new(client(
        v13,
        vec![SignatureScheme::ECDSA_NISTP256_SHA256, SignatureScheme::ECDSA_NISTP384_SHA384],
        ring::default_provider(),
    ));
    assert_eq!(connect(addr, "dual.example", &ecdsa13).await.0, ecdsa, "ECDSA-only signature schemes");
}

/// The first client's full handshake, 300 other clients' full handshakes, then the first
/// client again: it must resume.
async fn resumes_after_300_other_clients(version: &'static SupportedProtocolVersion, tls12: Tls12Resumption) {
    let dir = temp_dir(&format!("resume-{:?}-{tls12:?}", version.version));
    write_cert(&dir, "a", "resume.example", false);
    let lb = support::start_lb(&tls_config(&dir, &["a"], hello_backend().await)).await;
    let addr = lb.listener_addr("tls").unwrap();
    let mut first = client(version, all_schemes(), ring::default_provider());
    first.resumption = Resumption::default().tls12_resumption(tls12);
    let first = Arc::new(first);
    assert_eq!(connect(addr, "resume.example", &first).await.1, HandshakeKind::Full);
    assert_eq!(connect(addr, "resume.example", &first).await.1, HandshakeKind::Resumed, "resumes at once");

    // Each other client has a config of its own, so none of them resumes; 4 at a time.
    let others = (0..300).map(|_| {
        let mut c = client(version, all_schemes(), ring::default_provider());
        c.resumption = Resumption::default().tls12_resumption(tls12);
        Arc::new(c)
    });
    let others: Vec<_> = others.collect();
    for batch in others.chunks(4) {
        let kinds = futures_join(batch.iter().map(|c| {
            let c = c.clone();
            async move { connect(addr, "resume.example", &c).await }
        }))
        .await;
        assert!(kinds.iter().all(|k| k.1 == HandshakeKind::Full));
    }
    assert_eq!(
        connect(addr, "resume.example", &first).await.1,
        HandshakeKind::Resumed,
        "resumes after 300 other clients"
    );
}

/// Runs the futures concurrently and returns their outputs in order.
async fn futures_join<F>(futs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls13_resumption_survives_300_other_clients() {
    resumes_after_300_other_clients(&rustls::version::TLS13, Tls12Resumption::SessionIdOrTickets).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_ticket_resumption_survives_300_other_clients() {
    resumes_after_300_other_clients(&rustls::version::TLS12, Tls12Resumption::SessionIdOrTickets).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_session_id_resumption_survives_300_other_clients() {
    resumes_after_300_other_clients(&rustls::version::TLS12, Tls12Resumption::SessionIdOnly).await;
}

/// A TLS 1.2 ClientHello as rustls writes it for `sni`, with the name's bytes replaced by
/// `patch` (of the same length): rustls clients cannot send an IP address as SNI, some clients do.
fn client_hello_with_sni(sni: &str, patch: &str) -> Vec<u8> {
    assert_eq!(sni.len(), patch.len());
    let cfg = Arc::new(client(&rustls::version::TLS12, all_schemes(), ring::default_provider()));
    let mut conn = rustls::ClientConnection::new(cfg, ServerName::try_from(sni.to_string()).unwrap()).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    let at = hello.windows(sni.len()).position(|w| w == sni.as_bytes()).unwrap();
    hello[at..at + sni.len()].copy_from_slice(patch.as_bytes());
    hello
}

/// rustls logs client-triggered oddities (an IP address as SNI, a warning alert) at WARN through
/// the `log` crate; lb must not pass them on at WARN, once per handshake, to its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_triggered_rustls_warnings_are_not_logged_at_warn() {
    let dir = temp_dir("warn");
    write_cert(&dir, "a", "warn.example", false);
    let backend = hello_backend().await;
    let lb = lbproc::Lb::start(&tls_config(&dir, &["a"], backend), &["--workers", "1"]).await;
    let addr = lb.listener_addr(0, "tls").await;
    let from = lb.mark();
    for _ in 0..3 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut bytes = client_hello_with_sni("abcdefghi", "127.0.0.1");
        // A warning alert (unrecognized_name) in the same write: TLS 1.2 allows them, rustls
        // logs each.
        bytes.extend_from_slice(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x01, 0x70]);
        s.write_all(&bytes).await.unwrap();
        // The server answers the ClientHello (so it was parsed), then gives up when we stop.
        let mut first = [0u8; 1];
        tokio::time::timeout(support::PATIENCE, s.read_exact(&mut first)).await.unwrap().unwrap();
        assert_eq!(first[0], 0x16, "a handshake record answers the ClientHello");
        s.shutdown().await.unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(support::PATIENCE, s.read_to_end(&mut rest)).await.unwrap();
    }
    // A handshake that succeeds still works, and a reload's log line after everything above
    // guarantees that whatever was logged for those connections has been read from the pipe.
    let cfg = Arc::new(client(&rustls::version::TLS13, all_schemes(), ring::default_provider()));
    connect(addr, "warn.example", &cfg).await;
    lb.hup().await.unwrap();
    let warns: Vec<String> = lb.logs()[from..].iter().filter(|l| l.contains("WARN")).cloned().collect();
    assert!(warns.is_empty(), "WARN lines for client-triggered TLS oddities:\n{}", warns.join("\n"));
}
